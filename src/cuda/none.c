/* none.c - the CUDA entry point of a build without the CUDA backend
 * (TNN_CUDA=OFF, or AUTO without a toolkit): sessions stay on the CPU. */
#include "../core/internal.h"

const tnn_backend *tnn__cuda_backend(void) {
    tnn__log(TNN_LOG_INFO, "this build of tinynn has no CUDA backend (configured with "
                           "TNN_CUDA=OFF, or no CUDA toolkit was found)");
    return NULL;
}
