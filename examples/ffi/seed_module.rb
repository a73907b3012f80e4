#!/usr/bin/env ruby
# seed_module.rb - the seed module's methods from Ruby (tinynn.rb, ffi gem)
# checked against plain Ruby double-precision references (f32-level
# tolerance) and against the library's one-call tnn_mat_* functions (the
# same numbers exactly); bad input coming back as NULL or a status with a
# message; and, given a model, a two-turn conversation through TinyNN::LLM.
#
# Usage:  ruby examples/ffi/seed_module.rb path/to/libtinynn.so [MODEL.gguf]
#
# Prints one line per failed check, then "ffi_ruby: N passed, N failed";
# exit status 1 when a check failed, 77 (skipped) when Ruby has no ffi gem
# (Debian: apt-get install ruby-ffi). CI runs it as the ctest test ffi_ruby.

begin
  require_relative "tinynn"
rescue LoadError => e
  puts "ffi_ruby: skipped (#{e.message}; apt-get install ruby-ffi)"
  exit 77
end

lib = ARGV[0] or abort("usage: ruby seed_module.rb path/to/libtinynn.so [MODEL.gguf]")
TinyNN.load(File.exist?(lib) ? File.expand_path(lib) : lib)
C = TinyNN::C
Mat = TinyNN::Mat
$pass = 0
$fail = 0

def check(ok, what)
  if ok
    $pass += 1
  else
    $fail += 1
    puts "FAIL #{what}"
  end
end

def f32(x) = [x].pack("f").unpack1("f")
def rand_mat(rng, r, c, k = 2.0) = Mat.new(r, c, Array.new(r * c) { f32((rng.rand * 2 - 1) * k) })

# max |a - b| / (atol + rtol |b|)
def err(a, b, atol = 1e-5, rtol = 1e-5)
  a.zip(b).map { |x, y| (x - y).abs / (atol + rtol * y.abs) }.max || 0.0
end

def close(name, got, want, atol = 1e-5, rtol = 1e-5)
  e = err(got.flat, want, atol, rtol)
  check(got.flat.size == want.size && e <= 1.0, "#{name}: #{e.round(2)} of the tolerance")
end

def ref_matmul(a, b)
  Array.new(a.nrows * b.ncols) do |k|
    i, j = k.divmod(b.ncols)
    (0...a.ncols).sum { |t| a.flat[i * a.ncols + t] * b.flat[t * b.ncols + j] }
  end
end

def gelu_ref(x) = 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math::PI) * (x + 0.044715 * x**3)))
def sig(x) = 1.0 / (1.0 + Math.exp(-x))

def rows(m) = m.flat.each_slice(m.ncols).to_a

def softmax_ref(m)
  rows(m).flat_map do |r|
    mx = r.max
    e = r.map { |x| Math.exp(x - mx) }
    s = e.sum
    e.map { |x| x / s }
  end
end

rng = Random.new(7)
a = rand_mat(rng, 5, 7)
b = rand_mat(rng, 7, 3)
bt = rand_mat(rng, 4, 7)
a2 = rand_mat(rng, 5, 3)
x = rand_mat(rng, 4, 6)
y = rand_mat(rng, 4, 6)
gamma = Array.new(6) { f32(0.5 + rng.rand) }

# products
c = TinyNN.matmul(a, b)
close("matmul", c, ref_matmul(a, b), 1e-4, 1e-4)
out = FFI::MemoryPointer.new(:double, 15)
C.tnn_mat_matmul(TinyNN.doubles(a.flat), 5, 7, TinyNN.doubles(b.flat), 7, 3, out)
check(out.read_array_of_double(15) == c.flat, "matmul: the one-call tnn_mat_matmul differs")
want_t = Array.new(5 * 4) { |k| i, j = k.divmod(4); (0...7).sum { |t| a.flat[i * 7 + t] * bt.flat[j * 7 + t] } }
close("matmul_t", TinyNN.matmul_t(a, bt), want_t, 1e-4, 1e-4)

want_tm = Array.new(7 * 3) { |k| i, j = k.divmod(3); (0...5).sum { |t| a.flat[t * 7 + i] * a2.flat[t * 3 + j] } }
close("t_matmul", TinyNN.t_matmul(a, a2), want_tm, 1e-4, 1e-4)

# element-wise and rows
close("add", TinyNN.add(x, y), x.flat.zip(y.flat).map { |p, q| p + q })
close("mul", TinyNN.mul(x, y), x.flat.zip(y.flat).map { |p, q| p * q })
close("scale", TinyNN.scale(x, 0.5), x.flat.map { |p| p * 0.5 })
close("gelu", TinyNN.gelu(x), x.flat.map { |p| gelu_ref(p) })
close("silu", TinyNN.silu(x), x.flat.map { |p| p * sig(p) })
sm = TinyNN.softmax(x)
close("softmax", sm, softmax_ref(x))
out = FFI::MemoryPointer.new(:double, 24)
C.tnn_mat_softmax(TinyNN.doubles(x.flat), 4, 6, out)
check(out.read_array_of_double(24) == sm.flat, "softmax: the one-call tnn_mat_softmax differs")
close("transpose", TinyNN.transpose(x), rows(x).transpose.flatten)
rn = TinyNN.rms_norm(x, gamma, 1e-5)
want_rn = rows(x).flat_map do |r|
  inv = 1.0 / Math.sqrt(r.sum { |v| v * v } / r.size + 1e-5)
  r.each_with_index.map { |v, i| v * inv * gamma[i] }
end
close("rms_norm", rn, want_rn)
C.tnn_mat_rms_norm(TinyNN.doubles(x.flat), 4, 6, TinyNN.doubles(gamma), 1e-5, out)
check(out.read_array_of_double(24) == rn.flat, "rms_norm: the one-call tnn_mat_rms_norm differs")

# backward ops
gd = ->(p) { t = Math.tanh(Math.sqrt(2 / Math::PI) * (p + 0.044715 * p**3)); 0.5 * (1 + t) + 0.5 * p * (1 - t * t) * Math.sqrt(2 / Math::PI) * (1 + 3 * 0.044715 * p * p) }
close("gelu_back", TinyNN.gelu_back(x, y), x.flat.zip(y.flat).map { |p, q| q * gd.(p) })
close("silu_back", TinyNN.silu_back(x, y), x.flat.zip(y.flat).map { |p, q| q * sig(p) * (1 + p * (1 - sig(p))) })
want_sb = rows(sm).zip(rows(y)).flat_map do |s, d|
  dot = s.zip(d).sum { |p, q| p * q }
  s.zip(d).map { |p, q| p * (q - dot) }
end
close("softmax_back", TinyNN.softmax_back(sm, y), want_sb)
want_rb = rows(x).zip(rows(y)).flat_map do |r, d|
  ms = r.sum { |v| v * v } / r.size + 1e-5
  inv = 1.0 / Math.sqrt(ms)
  dot = r.zip(d).sum { |p, q| p * q }
  r.zip(d).map { |p, q| inv * q - p * dot * inv**3 / r.size }
end
close("rms_norm_back", TinyNN.rms_norm_back(x, y, 1e-5), want_rb)

# optimizer steps
v0 = Mat.new(4, 6, x.flat.map(&:abs))
m0 = Mat.new(4, 6, y.flat.map { |q| f32(-0.5 * q) }) # unlike the gradient, so m's update shows
st = TinyNN.adam_step(x, y, m0, v0, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001)
p_, m_, v_ = TinyNN.doubles(x.flat), TinyNN.doubles(m0.flat), TinyNN.doubles(v0.flat)
C.tnn_mat_adam_step(p_, TinyNN.doubles(y.flat), m_, v_, 4, 6, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001)
check(p_.read_array_of_double(24) == st.param.flat && m_.read_array_of_double(24) == st.m.flat &&
      v_.read_array_of_double(24) == st.v.flat, "adam_step: the one-call tnn_mat_adam_step differs")
close("sgd_step", TinyNN.sgd_step(x, y, 0.1), x.flat.zip(y.flat).map { |p, q| p - 0.1 * q })

# embeddings and the FFN chain
table = rand_mat(rng, 10, 4)
close("embed_lookup", TinyNN.embed_lookup(table, [3, 0, 9, 3]),
      [3, 0, 9, 3].flat_map { |i| table.flat[i * 4, 4] })
want_eb = Array.new(10 * 4, 0.0)
[3, 0, 9, 3].each_with_index { |r, i| 4.times { |k| want_eb[r * 4 + k] += table.flat[i * 4 + k] } }
close("embed_back", TinyNN.embed_back(Mat.new(4, 4, table.flat[0, 16]), [3, 0, 9, 3], 10), want_eb)
ce = TinyNN.cross_entropy_grad(x, [2, 5, 0], 3)
want_ce = softmax_ref(x).each_with_index.map do |p, k|
  i, v = k.divmod(6)
  i < 3 ? (p - (v == [2, 5, 0][i] ? 1.0 : 0.0)) / 3 : p / 3
end
close("cross_entropy_grad", ce, want_ce)
h = rand_mat(rng, 3, 4)
w1 = rand_mat(rng, 4, 8, 0.5)
w2 = rand_mat(rng, 8, 2, 0.5)
hid = Mat.new(3, 8, ref_matmul(h, w1).map { |p| f32(gelu_ref(p)) })
close("ffn_pipeline", TinyNN.ffn_pipeline(h, w1, w2), ref_matmul(hid, w2), 1e-4, 1e-3)

# a persistent session through the module's helpers: built once, run twice
sess = TinyNN.persistent_new(0)
ta = TinyNN.alloc_2d(sess, 5, 7)
tb = TinyNN.alloc_2d(sess, 3, 7) # b transposed
tc = TinyNN.build_matmul(sess, ta, tb)
tg = TinyNN.alloc_2d(sess, 1, 5) # the product is (3 x 5) row-major: b · aᵀ
tn = TinyNN.build_rms_norm(sess, TinyNN.build_gelu(sess, tc), tg, 1e-5)
C.tnn_set_output(tc)
TinyNN.check(TinyNN.realize(sess, tn))
[a, TinyNN.scale(a, -2.0)].each_with_index do |aa, k|
  TinyNN.upload_row_major(sess, ta, aa)
  TinyNN.upload_transposed(sess, tb, b)
  TinyNN.upload_row_major(sess, tg, Mat.new(1, 5, [1.0, 0.5, 2.0, 1.5, 0.25]))
  TinyNN.check(TinyNN.compute(sess))
  close("persistent run #{k + 1}", TinyNN.download_matmul(sess, tc, 5, 3), ref_matmul(aa, b), 1e-4, 1e-4)
  ct = rows(Mat.new(5, 3, ref_matmul(aa, b))).transpose # (3 x 5)
  want_chain = ct.flat_map do |r|
    gr = r.map { |v| gelu_ref(v) }
    inv = 1.0 / Math.sqrt(gr.sum { |v| v * v } / 5 + 1e-5)
    gr.each_with_index.map { |v, i| v * inv * [1.0, 0.5, 2.0, 1.5, 0.25][i] }
  end
  close("persistent run #{k + 1}: rms_norm(gelu(.))", TinyNN.download_to_mat(sess, tn, 3, 5),
        want_chain, 1e-4, 1e-4)
end

# errors: NULL or a status, with the reason
t_bad = C.tnn_matmul(sess, ta, C.tnn_input_2d_f32(sess, 3, 6))
check(t_bad.null? && C.tnn_last_error.include?("tnn_matmul"), "shape error: #{C.tnn_last_error}")
check(C.tnn_upload_from_float_array(sess, ta, TinyNN.doubles([1.0] * 3), 3).negative? &&
      C.tnn_last_error =~ /35|3/, "a short upload is refused: #{C.tnn_last_error}")
C.tnn_session_free(sess)
check(C.tnn_input_2d_f32(sess, 2, 2).null? && C.tnn_last_error.include?("not a live session"),
      "a freed session: #{C.tnn_last_error}")

# training a small model on bytes: the loss falls, the log comes to the block
corpus = "/tmp/tnn-ruby-corpus-#{Process.pid}.txt"
phrases = ["the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. "]
File.write(corpus, Array.new(2500) { phrases[rng.rand(3)] }.join)
log = +""
r = TinyNN.train(data: [corpus], steps: 80, batch: 8, seq: 32, dim: 32, ff: 64, layers: 2,
                 lr: 1e-2, warmup: 10, eval_every: 40, sample_len: 0) { |l| log << l }
check(r[:steps] == 80 && r[:val_loss] < r[:first_val_loss] - 2.0 && log.include?("step"),
      "training: #{r}")
begin
  TinyNN.train(data: [corpus], layers: "many")
  check(false, "a bad option raises")
rescue TinyNN::Error => e
  check(e.message.include?("layers"), "a bad option: #{e.message}")
end
File.delete(corpus)

# a language model
model = ARGV[1]
if model && File.exist?(model)
  TinyNN::LLM.open(model, n_ctx: 1024) do |m|
    text = "Ruby strings keep UTF-8: naïve café, 東京 🙂"
    check(m.detokenize(m.tokenize(text, 0)) == text, "tokenizer round trip")
    puts "#{m.arch} model, vocabulary #{m.n_vocab}"
    ["Which city is the capital of France?", "And of Germany?"].each do |q|
      puts "> #{q}"
      answer = m.chat(q, max_tokens: 48) { |piece| print piece }
      puts
      np, ng, _, gs = m.last_stats
      puts "  (#{np} prompt tokens computed, #{ng} generated, #{(ng / [gs, 1e-9].max).round} tokens/s)"
      check(!answer.empty?, "an answer to #{q}")
    end
    ppl, scored = m.perplexity(File.read(File.join(__dir__, "../../tests/data/perplexity.txt")), chunk: 128)
    puts "perplexity #{ppl.round(3)} over #{scored} tokens"
    check(ppl > 1 && ppl < 1000 && scored.positive?, "perplexity #{ppl}")
    if model.include?("SmolLM2")
      check((ppl / 21.2323 - 1).abs < 0.02, "SmolLM2's perplexity #{ppl} (llama.cpp: 21.2323)")
      check(m.messages[1][1].include?("Paris") && m.messages[3][1].include?("Berlin"),
            "SmolLM2's answers: #{m.messages[1][1]} / #{m.messages[3][1]}")
    end
  end
  begin
    TinyNN::LLM.open("/nonexistent.gguf")
    check(false, "opening a missing model raises")
  rescue TinyNN::Error => e
    check(e.message.include?("/nonexistent.gguf"), "missing model: #{e.message}")
  end
elsif model
  puts "model checks skipped: #{model} is absent (run make models)"
end

puts "ffi_ruby: #{$pass} passed, #{$fail} failed"
exit($fail.zero? ? 0 : 1)
