/* llama_golden.h - the records of tests/data/llama_smollm2.txt
 * (tools/llama_reference.py: llama.cpp's numbers for SmolLM2 prompts), read
 * by test_llama and test_llm_api. */
#ifndef TNN_TEST_LLAMA_GOLDEN_H
#define TNN_TEST_LLAMA_GOLDEN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char text[256]; /* the prompt */
    int n_tok, tok[64], top_id[10], greedy[32];
    double top_logit[10], margin[32];
} llama_record;

/* Up to max records of the file: their count, or -1 when it cannot be read. */
static int read_llama_records(const char *path, llama_record *r, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192];
    int n = -1;
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        if (!strncmp(line, "prompt ", 7)) {
            if (++n >= max) break;
            /* Python's repr of the text, in ' or ": \n and \<char> escapes */
            char quote = line[7];
            size_t k = 0;
            for (p = line + 8; *p && *p != '\n' && k + 1 < sizeof r[n].text; p++) {
                if (*p == quote && (p[1] == '\n' || !p[1])) break;
                if (*p == '\\' && p[1] == 'n') r[n].text[k++] = '\n', p++;
                else if (*p == '\\' && p[1]) r[n].text[k++] = p[1], p++;
                else r[n].text[k++] = *p;
            }
            r[n].text[k] = 0;
        } else if (n >= 0 && !strncmp(line, "tokens ", 7)) {
            p += 7;
            r[n].n_tok = (int)strtol(p, &p, 10);
            for (int i = 0; i < r[n].n_tok && i < 64; i++) r[n].tok[i] = (int)strtol(p, &p, 10);
        } else if (n >= 0 && !strncmp(line, "top10 ", 6)) {
            p += 6;
            for (int i = 0; i < 10; i++) {
                r[n].top_id[i] = (int)strtol(p, &p, 10);
                r[n].top_logit[i] = strtod(p + 1, &p);
            }
        } else if (n >= 0 && !strncmp(line, "greedy ", 7)) {
            p += 7;
            for (int i = 0; i < 32; i++) r[n].greedy[i] = (int)strtol(p, &p, 10);
        } else if (n >= 0 && !strncmp(line, "margin ", 7)) {
            p += 7;
            for (int i = 0; i < 32; i++) r[n].margin[i] = strtod(p, &p);
        }
    }
    fclose(f);
    return n + (n < max);
}

#endif
