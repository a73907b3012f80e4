# tinynn.rb - libtinynn from Ruby through the ffi gem (Debian: ruby-ffi).
#
# TinyNN is the seed module's surface (shared/seed/000_15ba5a1455d23023.txt)
# over libtinynn: the C functions bound with the types of
# shared/guide/seed-abi.md (:pointer, :int, :double, :size_t) and each
# method written as the module's call sequence (a session per call, values
# staged through the scratch, tnn_matmul's `b · aᵀ` layout read back from
# scratch[j*m + i]). TinyNN::LLM adds the language-model functions: a GGUF
# model, its chat template, generation with the text streamed to a block;
# TinyNN.train trains one from text (tnn train's options by name).
#
#   require_relative "tinynn"
#   TinyNN.load("build/libtinynn.so")
#   c = TinyNN.matmul(TinyNN::Mat.new(2, 3, [1, 2, 3, 4, 5, 6]), b)
#   TinyNN::LLM.open("models/SmolLM2-135M-Instruct.Q4_1.gguf") do |m|
#     m.chat("Why is the sky blue?") { |text| print text }
#   end
#   TinyNN.train(data: ["corpus.txt"], steps: 2000, checkpoint: "run.gguf") { |l| print l }

require "ffi"

module TinyNN
  # The project's matrix: nrows x ncols doubles, row-major in flat.
  Mat = Struct.new(:nrows, :ncols, :flat) do
    def initialize(nrows, ncols, flat = nil)
      super(nrows, ncols, flat ? flat.map(&:to_f) : Array.new(nrows * ncols, 0.0))
    end
  end

  AdamStepResult = Struct.new(:param, :m, :v)

  # The C functions. Call TinyNN.load first.
  module C
    extend FFI::Library

    def self.bind(path)
      ffi_lib path
      # errors
      attach_function :tnn_last_error, [], :string
      attach_function :tnn_last_status, [], :int
      attach_function :tnn_status_name, [:int], :string
      # the seed's ABI
      attach_function :tnn_session_new, [:int], :pointer
      attach_function :tnn_session_free, [:pointer], :void
      attach_function :tnn_input_2d_f32, %i[pointer int int], :pointer
      attach_function :tnn_input_1d_i32, %i[pointer int], :pointer
      attach_function :tnn_input_1d_f32, %i[pointer int], :pointer
      %i[tnn_matmul tnn_add tnn_mul tnn_get_rows tnn_softmax_back tnn_silu_back].each do |f|
        attach_function f, %i[pointer pointer pointer], :pointer
      end
      %i[tnn_gelu tnn_silu tnn_softmax tnn_transpose].each do |f|
        attach_function f, %i[pointer pointer], :pointer
      end
      attach_function :tnn_scale, %i[pointer pointer double], :pointer
      attach_function :tnn_rms_norm, %i[pointer pointer pointer double], :pointer
      attach_function :tnn_rms_norm_back, %i[pointer pointer pointer double], :pointer
      attach_function :tnn_get_rows_back, %i[pointer pointer pointer pointer], :pointer
      attach_function :tnn_realize, %i[pointer pointer], :int
      attach_function :tnn_compute, [:pointer], :int
      attach_function :tnn_set_output, [:pointer], :void
      attach_function :tnn_set_param, [:pointer], :void
      attach_function :tnn_scratch_set, %i[pointer int double], :void
      attach_function :tnn_scratch_get, %i[pointer int], :double
      attach_function :tnn_scratch_set_i32, %i[pointer int int], :void
      attach_function :tnn_scratch_get_i32, %i[pointer int], :int
      attach_function :tnn_upload, %i[pointer pointer], :int
      attach_function :tnn_download, %i[pointer pointer], :int
      attach_function :tnn_upload_from_float_array, %i[pointer pointer pointer size_t], :int
      attach_function :tnn_upload_from_int_array, %i[pointer pointer pointer size_t], :int
      attach_function :tnn_upload_transposed_f64, %i[pointer pointer pointer int int], :int
      attach_function :tnn_download_to_f64_array, %i[pointer pointer pointer size_t], :int
      attach_function :tnn_gelu_back_scratch, %i[pointer int], :void
      attach_function :tnn_adam_step_scratch,
                      %i[pointer int double double double double double double], :void
      # one-call functions on caller-owned double matrices (a sample of them)
      attach_function :tnn_mat_matmul, %i[pointer int int pointer int int pointer], :int
      attach_function :tnn_mat_softmax, %i[pointer int int pointer], :int
      attach_function :tnn_mat_rms_norm, %i[pointer int int pointer double pointer], :int
      attach_function :tnn_mat_adam_step, %i[pointer pointer pointer pointer int int double
                                             double double double double double], :int
      # language models
      callback :tnn_llm_text_fn, %i[pointer size_t pointer], :int
      attach_function :tnn_llm_open, %i[string int32 int32], :pointer
      attach_function :tnn_llm_close, [:pointer], :void
      attach_function :tnn_llm_n_vocab, [:pointer], :int32
      attach_function :tnn_llm_n_ctx, [:pointer], :int32
      attach_function :tnn_llm_arch, [:pointer], :string
      attach_function :tnn_llm_tokenize, %i[pointer pointer size_t int32 pointer int32], :int32
      attach_function :tnn_llm_detokenize, %i[pointer pointer size_t int32 pointer size_t], :int64
      attach_function :tnn_llm_chat_format,
                      %i[pointer string pointer pointer int32 int32 pointer size_t], :int64
      attach_function :tnn_sampler_new, %i[double int32 double double double uint64], :pointer
      attach_function :tnn_sampler_free, [:pointer], :void
      attach_function :tnn_llm_generate, %i[pointer pointer string int32 int32 tnn_llm_text_fn
                                            pointer pointer size_t], :int64
      attach_function :tnn_llm_last_stats, %i[pointer pointer pointer pointer pointer], :int
      attach_function :tnn_llm_perplexity, %i[pointer pointer size_t int32 int32 pointer pointer], :int
      # training a language model
      attach_function :tnn_trainer_new, [], :pointer
      attach_function :tnn_trainer_free, [:pointer], :void
      attach_function :tnn_trainer_set, %i[pointer string string], :int
      attach_function :tnn_trainer_run, %i[pointer tnn_llm_text_fn pointer], :int
      attach_function :tnn_trainer_result, %i[pointer pointer pointer pointer pointer pointer
                                              pointer], :int
    end
  end

  def self.load(path)
    C.bind(path)
  end

  # An error of the library as a Ruby exception.
  class Error < StandardError; end

  def self.check(rc)
    raise Error, "#{C.tnn_status_name(rc)}: #{C.tnn_last_error}" if rc.negative?

    rc
  end

  def self.doubles(values)
    p = FFI::MemoryPointer.new(:double, [values.size, 1].max)
    p.write_array_of_double(values)
    p
  end

  def self.int64s(values)
    p = FFI::MemoryPointer.new(:int64, [values.size, 1].max)
    p.write_array_of_int64(values)
    p
  end

  # ---- the module's one-shot methods: a session per call ----

  def self.stage_and_upload(sess, target, m)
    (m.nrows * m.ncols).times { |i| C.tnn_scratch_set(sess, i, m.flat[i]) }
    C.tnn_upload(sess, target)
  end

  def self.read_matmul(sess, m, n)
    out = Mat.new(m, n)
    m.times { |i| n.times { |j| out.flat[i * n + j] = C.tnn_scratch_get(sess, j * m + i) } }
    out
  end

  def self.read_row_major(sess, rows, cols)
    Mat.new(rows, cols, Array.new(rows * cols) { |i| C.tnn_scratch_get(sess, i) })
  end

  # A session for one call; the block's value is the method's. The session
  # is freed after, whatever happens.
  def self.one_shot
    sess = C.tnn_session_new(0)
    yield sess
  ensure
    C.tnn_session_free(sess) if sess
  end

  # Runs the realized graph and brings result into the scratch.
  def self.run(sess, result)
    C.tnn_compute(sess)
    C.tnn_download(sess, result)
  end

  # tnn_matmul of an (ar x ac) and a (br x bc) input, staged by the block,
  # read back as the (m x n) matrix its layout holds.
  def self.product(ar, ac, br, bc, m, n)
    one_shot do |sess|
      ta = C.tnn_input_2d_f32(sess, ar, ac)
      tb = C.tnn_input_2d_f32(sess, br, bc)
      tc = C.tnn_matmul(sess, ta, tb)
      C.tnn_realize(sess, tc)
      yield sess, ta, tb
      run(sess, tc)
      read_matmul(sess, m, n)
    end
  end

  # a @ b: b goes in transposed, since tnn_matmul computes A·Bᵀ.
  def self.matmul(a, b)
    product(a.nrows, a.ncols, b.ncols, b.nrows, a.nrows, b.ncols) do |sess, ta, tb_t|
      stage_and_upload(sess, ta, a)
      b.nrows.times do |i|
        b.ncols.times { |j| C.tnn_scratch_set(sess, j * b.nrows + i, b.flat[i * b.ncols + j]) }
      end
      C.tnn_upload(sess, tb_t)
    end
  end

  # a @ bᵀ, natively.
  def self.matmul_t(a, b)
    product(a.nrows, a.ncols, b.nrows, b.ncols, a.nrows, b.nrows) do |sess, ta, tb|
      stage_and_upload(sess, ta, a)
      stage_and_upload(sess, tb, b)
    end
  end

  # aᵀ @ b: both operands go in transposed.
  def self.t_matmul(a, b)
    product(a.ncols, a.nrows, b.ncols, b.nrows, a.ncols, b.ncols) do |sess, ta_t, tb_t|
      C.tnn_upload_transposed_f64(sess, ta_t, doubles(a.flat), a.nrows, a.ncols)
      C.tnn_upload_transposed_f64(sess, tb_t, doubles(b.flat), b.nrows, b.ncols)
    end
  end

  # An op of the matrices given (each staged and uploaded), built by the
  # block, read back row-major as an (out_rows x out_cols) matrix.
  def self.graph_op(inputs, out_rows, out_cols)
    one_shot do |sess|
      ts = inputs.map { |x| C.tnn_input_2d_f32(sess, x.nrows, x.ncols) }
      tc = yield(sess, *ts)
      C.tnn_realize(sess, tc)
      inputs.zip(ts).each { |x, t| stage_and_upload(sess, t, x) }
      run(sess, tc)
      read_row_major(sess, out_rows, out_cols)
    end
  end

  def self.unary(a, out_rows, out_cols, &build) = graph_op([a], out_rows, out_cols, &build)
  def self.binary(a, b, like, &build) = graph_op([a, b], like.nrows, like.ncols, &build)

  def self.add(a, b) = binary(a, b, a) { |s, x, y| C.tnn_add(s, x, y) }
  def self.mul(a, b) = binary(a, b, a) { |s, x, y| C.tnn_mul(s, x, y) }
  def self.scale(a, k) = unary(a, a.nrows, a.ncols) { |s, x| C.tnn_scale(s, x, k) }
  def self.gelu(a) = unary(a, a.nrows, a.ncols) { |s, x| C.tnn_gelu(s, x) }
  def self.silu(a) = unary(a, a.nrows, a.ncols) { |s, x| C.tnn_silu(s, x) }
  def self.softmax(a) = unary(a, a.nrows, a.ncols) { |s, x| C.tnn_softmax(s, x) }
  def self.transpose(a) = unary(a, a.ncols, a.nrows) { |s, x| C.tnn_transpose(s, x) }
  # forward input first, then the gradient
  def self.silu_back(x, dy) = binary(x, dy, x) { |s, a, b| C.tnn_silu_back(s, a, b) }
  # gradient first, then the softmax output
  def self.softmax_back(y, dy) = binary(dy, y, y) { |s, a, b| C.tnn_softmax_back(s, a, b) }
  # gradient first, then the forward input
  def self.rms_norm_back(x, dy, eps) = binary(dy, x, x) { |s, a, b| C.tnn_rms_norm_back(s, a, b, eps) }

  # RMSNorm(x) * gamma; gamma has x.ncols values.
  def self.rms_norm(x, gamma, eps)
    g = Mat.new(1, x.ncols, gamma)
    binary(x, g, x) { |s, tx, tg| C.tnn_rms_norm(s, tx, tg, eps) }
  end

  # Stages arrays one after the other in the scratch (slot k*n + i).
  def self.stage_all(sess, n, mats)
    mats.each_with_index { |x, k| n.times { |i| C.tnn_scratch_set(sess, k * n + i, x.flat[i]) } }
  end

  # n slots from slot k*n as a (rows x cols) matrix.
  def self.read_slots(sess, k, n, rows, cols)
    Mat.new(rows, cols, Array.new(n) { |i| C.tnn_scratch_get(sess, k * n + i) })
  end

  # dx = dh * gelu'(x), on the scratch only.
  def self.gelu_back(x, dh)
    one_shot do |sess|
      n = x.nrows * x.ncols
      stage_all(sess, n, [x, dh])
      C.tnn_gelu_back_scratch(sess, n)
      read_slots(sess, 2, n, x.nrows, x.ncols)
    end
  end

  # One Adam step on the scratch; returns the new param, m and v.
  def self.adam_step(param, grad, m, v, lr, b1, b2, eps, omc1, omc2)
    one_shot do |sess|
      n = param.nrows * param.ncols
      stage_all(sess, n, [param, grad, m, v])
      C.tnn_adam_step_scratch(sess, n, lr, b1, b2, eps, omc1, omc2)
      AdamStepResult.new(*[0, 2, 3].map { |k| read_slots(sess, k, n, param.nrows, param.ncols) })
    end
  end

  def self.sgd_step(param, grad, lr) = add(param, scale(grad, -lr))

  # get_rows (lookup) or get_rows_back (scatter-add into a (vocab x d)
  # shape) of a staged matrix and staged int32 indices.
  def self.rows_op(x, indices, out_rows)
    one_shot do |sess|
      tx = C.tnn_input_2d_f32(sess, x.nrows, x.ncols)
      tidx = C.tnn_input_1d_i32(sess, indices.size)
      tout = yield(sess, tx, tidx)
      C.tnn_realize(sess, tout)
      stage_and_upload(sess, tx, x)
      indices.each_with_index { |id, i| C.tnn_scratch_set_i32(sess, i, id) }
      C.tnn_upload(sess, tidx)
      run(sess, tout)
      read_row_major(sess, out_rows, x.ncols)
    end
  end

  # Row i of the result is table[indices[i]].
  def self.embed_lookup(table, indices)
    rows_op(table, indices, indices.size) { |s, tt, ti| C.tnn_get_rows(s, tt, ti) }
  end

  # Scatter-add: out[indices[i]] += d_out[i], out (vocab_size x d).
  def self.embed_back(d_out, indices, vocab_size)
    rows_op(d_out, indices, vocab_size) do |s, td, ti|
      C.tnn_get_rows_back(s, td, ti, C.tnn_input_2d_f32(s, vocab_size, d_out.ncols))
    end
  end

  # (softmax(logits) - one_hot(targets)) / n_pred, composed from the methods.
  def self.cross_entropy_grad(logits, targets, n_pred)
    oh = Mat.new(logits.nrows, logits.ncols)
    n_pred.times { |i| oh.flat[i * logits.ncols + targets[i]] = 1.0 }
    add(scale(softmax(logits), 1.0 / n_pred), scale(oh, -1.0 / n_pred))
  end

  # gelu(h @ w1) @ w2 as three one-shot calls.
  def self.ffn_pipeline(h, w1, w2) = matmul(gelu(matmul(h, w1)), w2)

  # ---- persistent sessions: build a graph once, run it many times ----

  def self.persistent_new(prefer_cuda) = C.tnn_session_new(prefer_cuda)
  def self.persistent_free(sess) = C.tnn_session_free(sess)
  def self.alloc_2d(sess, rows, cols) = C.tnn_input_2d_f32(sess, rows, cols)
  def self.alloc_1d_i32(sess, n) = C.tnn_input_1d_i32(sess, n)
  def self.build_matmul(sess, ta, tb) = C.tnn_matmul(sess, ta, tb)
  def self.build_add(sess, ta, tb) = C.tnn_add(sess, ta, tb)
  def self.build_gelu(sess, ta) = C.tnn_gelu(sess, ta)
  def self.build_softmax(sess, ta) = C.tnn_softmax(sess, ta)
  def self.build_scale(sess, ta, k) = C.tnn_scale(sess, ta, k)
  def self.build_rms_norm(sess, tx, tgamma, eps) = C.tnn_rms_norm(sess, tx, tgamma, eps)
  def self.realize(sess, result) = C.tnn_realize(sess, result)
  def self.compute(sess) = C.tnn_compute(sess)

  # One call: the Mat's values cross as one double array.
  def self.upload_row_major(sess, tensor, mat)
    C.tnn_upload_from_float_array(sess, tensor, doubles(mat.flat), mat.nrows * mat.ncols)
  end

  def self.upload_int_array(sess, tensor, indices)
    C.tnn_upload_from_int_array(sess, tensor, int64s(indices), indices.size)
  end

  def self.upload_transposed(sess, tensor, mat)
    C.tnn_upload_transposed_f64(sess, tensor, doubles(mat.flat), mat.nrows, mat.ncols)
  end

  def self.download_row_major(sess, tensor, rows, cols)
    C.tnn_download(sess, tensor)
    read_row_major(sess, rows, cols)
  end

  def self.download_to_mat(sess, tensor, rows, cols)
    buf = FFI::MemoryPointer.new(:double, rows * cols)
    C.tnn_download_to_f64_array(sess, tensor, buf, rows * cols)
    Mat.new(rows, cols, buf.read_array_of_double(rows * cols))
  end

  # A tnn_matmul result holds (i, j) at scratch[j*m + i].
  def self.download_matmul(sess, tensor, m, n)
    C.tnn_download(sess, tensor)
    read_matmul(sess, m, n)
  end

  # ---- training a language model (tnn train's options by name) ----

  # TinyNN.train(data: ["corpus.txt"], steps: 2000, checkpoint: "run.gguf") { |line| print line }
  # returns {steps:, first_loss:, last_loss:, first_val_loss:, val_loss:, tokens_per_s:}.
  def self.train(data:, **options, &on_log)
    t = C.tnn_trainer_new
    raise Error, C.tnn_last_error if t.null?

    begin
      Array(data).each { |f| check(C.tnn_trainer_set(t, "data", f)) }
      options.each { |k, v| check(C.tnn_trainer_set(t, k.to_s.tr("_", "-"), v.to_s)) }
      cb = proc do |ptr, len, _user|
        on_log&.call(ptr.read_bytes(len))
        0
      end
      check(C.tnn_trainer_run(t, cb, nil))
      steps = FFI::MemoryPointer.new(:int32)
      vals = Array.new(5) { FFI::MemoryPointer.new(:double) }
      check(C.tnn_trainer_result(t, steps, *vals))
      keys = %i[first_loss last_loss first_val_loss val_loss tokens_per_s]
      { steps: steps.read_int32 }.merge(keys.zip(vals.map(&:read_double)).to_h)
    ensure
      C.tnn_trainer_free(t)
    end
  end

  # ---- language models ----

  # A GGUF language model: TinyNN::LLM.open(path) { |m| ... } closes it after.
  class LLM
    TOK_ADD_SPECIAL = 1
    TOK_PARSE_SPECIAL = 2
    GEN_CHAT = 1
    GEN_REUSE = 2

    def self.open(path, n_ctx: 0, temperature: 0.0, seed: 1)
      m = new(path, n_ctx, temperature, seed)
      return m unless block_given?

      begin
        yield m
      ensure
        m.close
      end
    end

    attr_reader :messages

    def initialize(path, n_ctx, temperature, seed)
      @m = C.tnn_llm_open(path, n_ctx, 0)
      raise Error, C.tnn_last_error if @m.null?

      @sampler = C.tnn_sampler_new(temperature, 40, 0.95, 0.05, 1.0, seed)
      @messages = []
    end

    def close
      C.tnn_sampler_free(@sampler)
      C.tnn_llm_close(@m)
      @m = FFI::Pointer::NULL
    end

    def arch = C.tnn_llm_arch(@m)
    def n_vocab = C.tnn_llm_n_vocab(@m)

    def tokenize(text, flags = TOK_ADD_SPECIAL | TOK_PARSE_SPECIAL)
      buf = FFI::MemoryPointer.from_string(text)
      n = TinyNN.check(C.tnn_llm_tokenize(@m, buf, text.bytesize, flags, nil, 0))
      ids = FFI::MemoryPointer.new(:int32, [n, 1].max)
      C.tnn_llm_tokenize(@m, buf, text.bytesize, flags, ids, n)
      ids.read_array_of_int32(n)
    end

    def detokenize(ids)
      p = FFI::MemoryPointer.new(:int32, [ids.size, 1].max)
      p.write_array_of_int32(ids)
      n = TinyNN.check(C.tnn_llm_detokenize(@m, p, ids.size, 0, nil, 0))
      out = FFI::MemoryPointer.new(:char, n + 1)
      C.tnn_llm_detokenize(@m, p, ids.size, 0, out, n + 1)
      out.read_bytes(n).force_encoding(Encoding::UTF_8)
    end

    # The conversation so far in the model's chat template.
    def chat_text
      roles = FFI::MemoryPointer.new(:pointer, @messages.size)
      texts = FFI::MemoryPointer.new(:pointer, @messages.size)
      keep = @messages.flat_map { |r, t| [FFI::MemoryPointer.from_string(r), FFI::MemoryPointer.from_string(t)] }
      roles.write_array_of_pointer(keep.each_slice(2).map(&:first))
      texts.write_array_of_pointer(keep.each_slice(2).map(&:last))
      n = TinyNN.check(C.tnn_llm_chat_format(@m, nil, roles, texts, @messages.size, 1, nil, 0))
      out = FFI::MemoryPointer.new(:char, n + 1)
      C.tnn_llm_chat_format(@m, nil, roles, texts, @messages.size, 1, out, n + 1)
      out.read_bytes(n).force_encoding(Encoding::UTF_8)
    end

    # Generates up to max_tokens from prompt; the block gets the text as it
    # comes (whole UTF-8 characters). Returns the whole text.
    def generate(prompt, max_tokens: 128, flags: 0, &block)
      pieces = []
      cb = proc do |ptr, len, _user|
        piece = ptr.read_bytes(len).force_encoding(Encoding::UTF_8)
        pieces << piece
        block&.call(piece)
        0
      end
      TinyNN.check(C.tnn_llm_generate(@m, @sampler, prompt, max_tokens, flags, cb, nil, nil, 0))
      pieces.join
    end

    # One turn of a conversation: the whole exchange goes in, the cache
    # keeps what it already holds.
    def chat(question, max_tokens: 128, &block)
      @messages << ["user", question]
      answer = generate(chat_text, max_tokens: max_tokens, flags: GEN_REUSE, &block)
      @messages << ["assistant", answer]
      answer
    end

    # The text's perplexity by llama.cpp's method: [perplexity, tokens scored].
    def perplexity(text, chunk: 512, max_chunks: 0)
      ppl = FFI::MemoryPointer.new(:double)
      n = FFI::MemoryPointer.new(:int32)
      buf = FFI::MemoryPointer.from_string(text)
      TinyNN.check(C.tnn_llm_perplexity(@m, buf, text.bytesize, chunk, max_chunks, ppl, n))
      [ppl.read_double, n.read_int32]
    end

    # [prompt tokens computed, tokens generated, prompt seconds, generation seconds]
    def last_stats
      np = FFI::MemoryPointer.new(:int32)
      ng = FFI::MemoryPointer.new(:int32)
      ps = FFI::MemoryPointer.new(:double)
      gs = FFI::MemoryPointer.new(:double)
      C.tnn_llm_last_stats(@m, np, ng, ps, gs)
      [np.read_int32, ng.read_int32, ps.read_double, gs.read_double]
    end
  end
end
