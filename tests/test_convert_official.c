/* test_convert_official.c - ds4cl-convert on the official checkpoint's
 * encodings, streaming with bounded memory, and resuming.
 *
 * The models come from tests/golden/make_model.py --encoding official-fp8
 * (python3 + numpy + ml_dtypes): FP8 E4M3 projections with E8M0 scales per
 * 128x128 block, FP4 E2M1 routed experts (two codes per I8 byte) with E8M0
 * scales per 1x32, F32/BF16 for the rest.  With --dequant-out the script
 * also writes the exact f32 values those encodings stand for, computed by
 * ml_dtypes (an implementation independent of ours).  What is checked:
 *   - the block-scaled reader on hand-made tensors (codes, scales, packing,
 *     partial blocks, NaN and overflow errors), page release (a tensor read
 *     chunk by chunk leaves no page mapped) and the streaming GGUF writer
 *     (same bytes as the in-memory writer, misuse, resume cut);
 *   - --type f32 of the FP8 model equals the dequantized values bit for bit
 *     (every tensor), and that GGUF runs through the engine;
 *   - q8_0 / q4 / q2 of the FP8 model equal the same recipes of its f32
 *     dequantization byte for byte, with the published per-class types, for
 *     any thread count;
 *   - bad scales (missing, wrong shape or dtype, NaN, NaN codes, two scales
 *     for one weight) fail with one clear line and leave nothing behind;
 *   - peak RSS of converting a ~200 MB checkpoint stays under 100 MB;
 *   - a conversion stopped mid-tensor (DS4CL_CONVERT_STOP_AFTER) and rerun,
 *     even with corrupted partial output, gives the uninterrupted bytes.
 */
#include "test.h"
#include "util_convert.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/engine.h"
#include "../src/gguf.h"
#include "../src/gguf_write.h"
#include "../src/model.h"
#include "../src/quant.h"
#include "../src/safetensors.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                 */
/* ---------------------------------------------------------------------- */

/* Scratch folder of one test: /tmp/ds4cl-convoff-<pid>-<tag>, created fresh. */
static const char *scratch(char *buf, size_t cap, const char *tag) {
    return tc_scratch(buf, cap, "ds4cl-convoff", tag);
}

/* make_model.py preset "mini" (3 layers, 2 experts; defined here, as in
 * test_convert.c), "mini1" (the same with one expert: cheap q2/q4) or "big"
 * (~200 MB of BF16, for the memory test), or a
 * preset of the script.  encoding "fp8" writes the official FP8/FP4
 * checkpoint to dir and its f32 dequantization to ref; "bf16" the plain
 * official naming in BF16. */
static int make_model(const char *dir, const char *ref, const char *preset, const char *encoding) {
    const char *root = test_root_dir();
    const char *extra = "";
    if (strncmp(preset, "mini", 4) == 0)
        extra = strcmp(preset, "mini1") == 0
            ? "p.update(seed=\"ds4cl-convert-mini\", vocab_size=64, num_hidden_layers=3,\n"
              "  compress_ratios=[0, 4, 128], num_hash_layers=1, num_attention_heads=2,\n"
              "  head_dim=64, q_lora_rank=32, o_groups=2, o_lora_rank=32, n_routed_experts=1,\n"
              "  num_experts_per_tok=1, index_n_heads=2, index_topk=4, moe_intermediate_size=256)\n"
            : "p.update(seed=\"ds4cl-convert-mini\", vocab_size=64, num_hidden_layers=3,\n"
              "  compress_ratios=[0, 4, 128], num_hash_layers=1, num_attention_heads=2,\n"
              "  head_dim=64, q_lora_rank=32, o_groups=2, o_lora_rank=32, n_routed_experts=2,\n"
              "  num_experts_per_tok=1, index_n_heads=2, index_topk=4,\n"
              "  moe_intermediate_size=256)\n";
    else if (strcmp(preset, "big") == 0)
        extra = "p.update(seed=\"ds4cl-convert-big\", vocab_size=8192, hidden_size=512,\n"
                "  num_hidden_layers=3, compress_ratios=[0, 4, 128], num_hash_layers=1,\n"
                "  num_attention_heads=2, head_dim=64, q_lora_rank=32, o_groups=2,\n"
                "  o_lora_rank=32, n_routed_experts=40, num_experts_per_tok=2, index_n_heads=2,\n"
                "  index_topk=4, moe_intermediate_size=512)\n";
    else if (strcmp(encoding, "fp8") == 0) /* a script preset: its command line */
        return tc_sh("python3 '%s/tests/golden/make_model.py' --preset %s --out '%s' --naming "
                     "official --encoding official-fp8 --dequant-out '%s'", root, preset, dir, ref);
    bool fp8 = strcmp(encoding, "fp8") == 0;
    return tc_sh("python3 -c 'import sys; sys.path.insert(0, \"%s/tests/golden\")\n"
                 "import make_model as m\n"
                 "p = dict(m.PRESETS[\"tiny-a\"])\n"
                 "%s"
                 "m.PRESETS[\"%s\"] = p\n"
                 "%s' '%s' '%s' '%s'", root, extra, preset,
                 fp8 ? "m.write_official_fp8(sys.argv[1], sys.argv[2], sys.argv[3])"
                  : "m.write_model(sys.argv[1], sys.argv[2], \"official\", \"bf16\")",
                 preset, dir, ref ? ref : "");
}

/* The converter binary next to this runner. */
static const char *converter(char *buf, size_t cap) {
    snprintf(buf, cap, "%s/ds4cl-convert", test_bin_dir());
    return buf;
}

/* Run the converter (quiet), stderr to log: the exit status. */
static int convert(const char *in, const char *out, const char *type, int threads,
                   const char *log) {
    char bin[600];
    return tc_sh("'%s' '%s' '%s' --type %s --name tiny --threads %d -q 2>'%s'",
                 converter(bin, sizeof(bin)), in, out, type, threads, log);
}

/* ---------------------------------------------------------------------- */
/* Block-scaled reader                                                     */
/* ---------------------------------------------------------------------- */

static int test_scaled_reader(void) {
    char dir[256], path[512];
    scratch(dir, sizeof(dir), "scaled");
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    /* e: E4M3 [2, 4], E8M0 blocks of 1x2 -> scale [2, 2]
     * p: FP4 in I8 [3, 2] (logical [3, 4]), F32 blocks of 2x3 -> [2, 2]
     * n: E4M3 [1, 2] holding a NaN code; s: E8M0 [1, 1] = 0xff (NaN)
     * o: E4M3 [1, 1] = 448 with scale 2^127 (overflows) */
    uint8_t data[64] = {0};
    const uint8_t e[8] = {0x38, 0xb8, 0x7e, 0x01, 0x81, 0x00, 0x08, 0x30};
    const uint8_t es[4] = {127, 128, 0, 254};
    const uint8_t pk[6] = {0x71, 0xf9, 0x2a, 0x00, 0x8c, 0x35};
    const float ps[4] = {1.0f, 0.5f, -2.0f, 3.0f};
    memcpy(data, e, 8);
    memcpy(data + 8, es, 4);
    memcpy(data + 12, pk, 6);
    memcpy(data + 20, ps, 16);
    data[36] = 0x7f;
    data[37] = 0x38;
    data[38] = 0xff;
    data[39] = 0x7e;
    data[40] = 254;
    T_CHECK(tc_write_st(path, "{"
                        "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[2,4],\"data_offsets\":[0,8]},"
                        "\"es\":{\"dtype\":\"F8_E8M0\",\"shape\":[2,2],\"data_offsets\":[8,12]},"
                        "\"p\":{\"dtype\":\"I8\",\"shape\":[3,2],\"data_offsets\":[12,18]},"
                        "\"ps\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[20,36]},"
                        "\"n\":{\"dtype\":\"F8_E4M3\",\"shape\":[1,2],\"data_offsets\":[36,38]},"
                        "\"s\":{\"dtype\":\"U8\",\"shape\":[1,1],\"data_offsets\":[38,39]},"
                        "\"o\":{\"dtype\":\"F8_E4M3\",\"shape\":[1,1],\"data_offsets\":[39,40]},"
                        "\"os\":{\"dtype\":\"F8_E8M0\",\"shape\":[1,1],\"data_offsets\":[40,41]}}",
                        data, 41), "write");
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, dir, &err) == 0, "%s", err.msg);
    const st_tensor *E = st_find(&s, "e"), *ES = st_find(&s, "es"), *P = st_find(&s, "p");
    const st_tensor *PS = st_find(&s, "ps");
    st_scaled q;
    float v[12];
    /* E4M3: 1, -1, 448, 2^-9, -2^-9, 0, 2^-6, 0.5; scales 2^0, 2^1 / 2^-127, 2^127
     * (-2^-136 is an f32 subnormal, still exact) */
    T_CHECK(st_scaled_init(&q, &s, E, ES, 1, 2, &err) == 0, "%s", err.msg);
    T_CHECK(q.rows == 2 && q.cols == 4 && q.code == ST_CODE_E4M3, "dims");
    T_CHECK(st_read_scaled_f32(&s, &q, 0, 8, v, &err) == 0, "%s", err.msg);
    const float we[8] = {1.0f, -1.0f, 896.0f, 0x1p-8f, -0x1p-136f, 0.0f, 0x1p+121f, 0x1p+126f};
    for (int i = 0; i < 8; i++) {
        uint32_t a, b;
        memcpy(&a, &v[i], 4);
        memcpy(&b, &we[i], 4);
        T_CHECK(a == b, "e[%d] = %g, expected %g", i, (double)v[i], (double)we[i]);
    }
    T_CHECK(st_read_scaled_f32(&s, &q, 3, 3, v, &err) == 0 && v[0] == 0x1p-8f && v[2] == 0.0f,
            "offset read");
    T_CHECK(st_read_scaled_f32(&s, &q, 6, 3, v, &err) != 0 && strstr(err.msg, "outside"),
            "%s", err.msg);
    /* FP4 packed low nibble first: 0x71 -> 0.5, 6; 0xf9 -> -0.5, -6; 0x2a -> -1, 1;
     * 0x00 -> 0, 0; 0x8c -> -2, -0; 0x35 -> 3, 1.5.  Blocks 2x3: cols 0-2 / 3. */
    T_CHECK(st_scaled_init(&q, &s, P, PS, 2, 3, &err) == 0, "%s", err.msg);
    T_CHECK(q.rows == 3 && q.cols == 4 && q.code == ST_CODE_E2M1, "fp4 dims");
    T_CHECK(st_read_scaled_f32(&s, &q, 0, 12, v, &err) == 0, "%s", err.msg);
    const float wp[12] = {0.5f, 6.0f, -0.5f, -3.0f,   -1.0f, 1.0f, 0.0f, 0.0f,
                          4.0f, 0.0f, -6.0f, 4.5f};
    for (int i = 0; i < 12; i++)
        T_CHECK(v[i] == wp[i] && signbit(v[i]) == signbit(wp[i]), "p[%d] = %g, expected %g", i,
                (double)v[i], (double)wp[i]);
    /* Shape and dtype errors. */
    T_CHECK(st_scaled_init(&q, &s, P, PS, 1, 32, &err) != 0 &&
            strstr(err.msg, "'ps': shape (2, 2), expected (3, 1)") &&
            strstr(err.msg, "blocks of 1x32"), "%s", err.msg);
    T_CHECK(st_scaled_init(&q, &s, PS, ES, 1, 2, &err) != 0 &&
            strstr(err.msg, "dtype F32 does not take block scales"), "%s", err.msg);
    T_CHECK(st_scaled_init(&q, &s, E, E, 1, 2, &err) != 0 &&
            strstr(err.msg, "scale dtype F8_E4M3"), "%s", err.msg);
    /* NaN code, NaN scale, overflow. */
    T_CHECK(st_scaled_init(&q, &s, st_find(&s, "n"), ES, 1, 2, &err) != 0, "n shape");
    T_CHECK(st_scaled_init(&q, &s, st_find(&s, "n"), st_find(&s, "s"), 1, 2, &err) == 0, "%s",
            err.msg);
    T_CHECK(st_read_scaled_f32(&s, &q, 0, 2, v, &err) != 0 && strstr(err.msg, "scale is nan"),
            "%s", err.msg);
    T_CHECK(st_scaled_init(&q, &s, st_find(&s, "n"), st_find(&s, "os"), 1, 2, &err) == 0, "%s",
            err.msg);
    T_CHECK(st_read_scaled_f32(&s, &q, 0, 2, v, &err) != 0 &&
            strstr(err.msg, "element (0, 0) is a NaN code (0x7f)"), "%s", err.msg);
    T_CHECK(st_scaled_init(&q, &s, st_find(&s, "o"), st_find(&s, "os"), 1, 1, &err) == 0, "%s",
            err.msg);
    T_CHECK(st_read_scaled_f32(&s, &q, 0, 1, v, &err) != 0 && strstr(err.msg, "overflows f32"),
            "%s", err.msg);
    /* Released pages read back the same. */
    st_release(&s, E, 0, 8);
    st_release(&s, P, 0, 6);
    T_CHECK(st_scaled_init(&q, &s, E, ES, 1, 2, &err) == 0 &&
            st_read_scaled_f32(&s, &q, 0, 1, v, &err) == 0 && v[0] == 1.0f, "after release");
    st_close(&s);
    tc_scratch_rm(dir);
    return 0;
}

/* Pages of [p, p+len) mapped in this process (/proc/self/pagemap), or -1. */
static long mapped_pages(const void *p, uint64_t len) {
    FILE *fp = fopen("/proc/self/pagemap", "rb");
    long page = sysconf(_SC_PAGESIZE), n = 0;
    if (!fp || page <= 0) {
        if (fp) fclose(fp);
        return -1;
    }
    uint64_t first = (uint64_t)(uintptr_t)p / (uint64_t)page;
    uint64_t last = ((uint64_t)(uintptr_t)p + len + (uint64_t)page - 1) / (uint64_t)page;
    for (uint64_t pg = first; pg < last; pg++) {
        uint64_t e = 0;
        if (fseeko(fp, (off_t)(pg * 8), SEEK_SET) != 0 || fread(&e, 8, 1, fp) != 1) {
            n = -1;
            break;
        }
        n += (long)(e >> 63); /* "present" */
    }
    fclose(fp);
    return n;
}

/* A tensor read in chunks, each released after use (as the converter
 * does), leaves no page of its mapping resident: not even the ones the
 * kernel mapped around each fault (the reason for the release slack). */
static int test_release_pages(void) {
    char dir[256], path[512];
    scratch(dir, sizeof(dir), "release");
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    enum { N = 3 << 20, CHUNK = 100000 }; /* 12 MB of F32, unaligned chunks */
    float *v = malloc(N * sizeof(float)), *buf = malloc(CHUNK * sizeof(float));
    T_CHECK(v && buf, "alloc");
    for (int i = 0; i < N; i++) v[i] = (float)i;
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "{\"w\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", N,
             N * 4);
    T_CHECK(tc_write_st(path, hdr, v, N * sizeof(float)), "write");
    /* Out of the page cache, so reads come through readahead (large folios,
     * fault-around), as they do from a checkpoint on disk. */
    int fd = open(path, O_RDONLY);
    T_CHECK(fd >= 0 && fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0,
            "fadvise");
    close(fd);
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, dir, &err) == 0, "%s", err.msg);
    const st_tensor *t = st_find(&s, "w");
    bool ok = true;
    for (uint64_t i = 0; ok && i < N; i += CHUNK) {
        uint64_t n = N - i < CHUNK ? N - i : CHUNK;
        ok = st_read_f32(&s, t, i, n, buf, &err) == 0 && buf[0] == (float)i &&
             buf[n - 1] == (float)(i + n - 1);
        st_release(&s, t, i, n);
    }
    long left = mapped_pages(s.shards[0].base, s.shards[0].size);
    st_close(&s);
    free(v);
    free(buf);
    T_CHECK(ok, "chunk values %s", err.msg);
    T_CHECK(left == 0, "%ld pages of the 12 MB mapping still resident", left);
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Streaming writer                                                        */
/* ---------------------------------------------------------------------- */

/* Three tensors: F32 [5] (padded), Q8_0 [32, 2], I32 [3]. */
static gguf_writer *stream_writer(bool with_data, const uint8_t *data[3]) {
    gguf_writer *w = gguf_writer_new(0);
    const uint64_t ne[3][2] = {{5, 1}, {32, 2}, {3, 1}};
    const uint32_t type[3] = {DS4_TYPE_F32, DS4_TYPE_Q8_0, DS4_TYPE_I32};
    const char *name[3] = {"a", "b", "c"};
    gguf_w_str(w, "general.architecture", "test");
    gguf_w_u32(w, "x.count", 7);
    ds4_error err;
    for (int i = 0; i < 3; i++) {
        uint32_t nd = i == 1 ? 2 : 1;
        int rc = with_data ? gguf_w_tensor(w, name[i], nd, ne[i], type[i], data[i], &err)
                           : gguf_w_tensor_info(w, name[i], nd, ne[i], type[i], &err);
        if (rc) {
            fprintf(stderr, "    %s\n", err.msg);
            gguf_writer_free(w);
            return NULL;
        }
    }
    return w;
}

static int test_stream_writer(void) {
    char dir[256], path[512];
    scratch(dir, sizeof(dir), "stream");
    snprintf(path, sizeof(path), "%s/s.gguf", dir);
    uint8_t a[20], b[68], c[12];
    for (int i = 0; i < 20; i++) a[i] = (uint8_t)(i * 7 + 1);
    for (int i = 0; i < 68; i++) b[i] = (uint8_t)(i * 13 + 5);
    for (int i = 0; i < 12; i++) c[i] = (uint8_t)(i + 100);
    const uint8_t *data[3] = {a, b, c};
    ds4_error err = {{0}};
    gguf_writer *m = stream_writer(true, data);
    uint8_t *img = NULL;
    uint64_t size = 0;
    T_CHECK(m && gguf_writer_to_memory(m, &img, &size, &err) == 0, "%s", err.msg);
    gguf_writer_free(m);

    /* Streamed in odd pieces: the same bytes. */
    gguf_writer *w = stream_writer(false, data);
    T_CHECK(w, "writer");
    T_CHECK(gguf_writer_save(w, path, &err) != 0 && strstr(err.msg, "'a' has no data"), "%s",
            err.msg);
    T_CHECK(gguf_writer_stream_open(w, path, 0, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_writer_stream_write(w, a, 21, &err) != 0 && strstr(err.msg, "21 bytes written, "
            "20 left"), "%s", err.msg);
    T_CHECK(gguf_writer_stream_write(w, a, 3, &err) == 0 &&
            gguf_writer_stream_write(w, a + 3, 17, &err) == 0 && gguf_writer_stream_done(w) == 1,
            "a");
    T_CHECK(gguf_writer_stream_close(w, &err) != 0 && strstr(err.msg, "after 1 of 3"), "%s",
            err.msg);
    gguf_writer_free(w);
    w = stream_writer(false, data);
    T_CHECK(gguf_writer_stream_open(w, path, 0, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_writer_stream_write(w, a, 20, &err) == 0 &&
            gguf_writer_stream_write(w, b, 40, &err) == 0 &&
            gguf_writer_stream_write(w, b + 40, 28, &err) == 0 &&
            gguf_writer_stream_write(w, c, 12, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_writer_stream_write(w, c, 1, &err) != 0 && strstr(err.msg, "past the last"),
            "%s", err.msg);
    T_CHECK(gguf_writer_stream_close(w, &err) == 0, "%s", err.msg);
    uint64_t off, nb, end, hl;
    T_CHECK(gguf_writer_tensor_span(w, 1, &off, &nb, &end) == 0 && nb == 68 && end - off == 96,
            "span");
    gguf_writer_head(w, &hl);
    T_CHECK(off == hl + 32, "offset %" PRIu64 " head %" PRIu64, off, hl);
    gguf_w_u32(w, "late.key", 1);
    gguf_writer_free(w);
    size_t len;
    char *file = tc_slurp(path, &len);
    T_CHECK(file && len == size && memcmp(file, img, size) == 0, "stream != memory image");
    free(file);

    /* Resume after tensor 0 of a file whose tail is garbage: cut and continue. */
    T_CHECK(tc_sh("printf 'garbage' >> '%s'", path) == 0, "append");
    w = stream_writer(false, data);
    T_CHECK(gguf_writer_stream_open(w, path, 1, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_writer_stream_write(w, b, 68, &err) == 0 &&
            gguf_writer_stream_write(w, c, 12, &err) == 0 &&
            gguf_writer_stream_close(w, &err) == 0, "%s", err.msg);
    gguf_writer_free(w);
    file = tc_slurp(path, &len);
    T_CHECK(file && len == size && memcmp(file, img, size) == 0, "resumed != memory image");
    free(file);
    /* Resume against another head, or a file too short. */
    w = gguf_writer_new(0);
    gguf_w_str(w, "general.architecture", "other");
    uint64_t ne1[1] = {5};
    T_CHECK(gguf_w_tensor_info(w, "a", 1, ne1, DS4_TYPE_F32, &err) == 0, "%s", err.msg);
    T_CHECK(gguf_writer_stream_open(w, path, 1, &err) != 0 && strstr(err.msg, "head differs"),
            "%s", err.msg);
    T_CHECK(gguf_w_tensor_info(w, "z", 1, ne1, DS4_TYPE_F32, &err) != 0 &&
            strstr(err.msg, "after the layout"), "%s", err.msg);
    gguf_writer_free(w);
    T_CHECK(truncate(path, (off_t)(off + 10)) == 0, "truncate");
    w = stream_writer(false, data);
    T_CHECK(gguf_writer_stream_open(w, path, 2, &err) != 0 && strstr(err.msg, "cannot resume"),
            "%s", err.msg);
    gguf_writer_free(w);
    free(img);
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* FP8 checkpoint -> f32: exact, and it runs                               */
/* ---------------------------------------------------------------------- */

/* GGUF name and first row of an official tensor name ("layers.N.x"). */
static bool gguf_name_of(const char *off, uint64_t n_ff, uint64_t n_embd, char *out, size_t cap,
                         uint64_t *row) {
    static const char *const globals[][2] = {
        {"embed.weight", "token_embd.weight"}, {"head.weight", "output.weight"},
        {"norm.weight", "output_norm.weight"}, {"hc_head_fn", "output_hc_fn.weight"},
        {"hc_head_base", "output_hc_base.weight"}, {"hc_head_scale", "output_hc_scale.weight"},
    };
    static const char *const layer[][2] = {
        {"attn_norm.weight", "attn_norm.weight"}, {"ffn_norm.weight", "ffn_norm.weight"},
        {"hc_attn_fn", "hc_attn_fn.weight"}, {"hc_attn_base", "hc_attn_base.weight"},
        {"hc_attn_scale", "hc_attn_scale.weight"}, {"hc_ffn_fn", "hc_ffn_fn.weight"},
        {"hc_ffn_base", "hc_ffn_base.weight"}, {"hc_ffn_scale", "hc_ffn_scale.weight"},
        {"attn.attn_sink", "attn_sinks.weight"}, {"attn.wq_a.weight", "attn_q_a.weight"},
        {"attn.q_norm.weight", "attn_q_a_norm.weight"}, {"attn.wq_b.weight", "attn_q_b.weight"},
        {"attn.wkv.weight", "attn_kv.weight"}, {"attn.kv_norm.weight", "attn_kv_a_norm.weight"},
        {"attn.wo_a.weight", "attn_output_a.weight"}, {"attn.wo_b.weight", "attn_output_b.weight"},
        {"attn.compressor.ape", "attn_compressor_ape.weight"},
        {"attn.compressor.wkv.weight", "attn_compressor_kv.weight"},
        {"attn.compressor.wgate.weight", "attn_compressor_gate.weight"},
        {"attn.compressor.norm.weight", "attn_compressor_norm.weight"},
        {"attn.indexer.wq_b.weight", "indexer.attn_q_b.weight"},
        {"attn.indexer.weights_proj.weight", "indexer.proj.weight"},
        {"attn.indexer.compressor.ape", "indexer_compressor_ape.weight"},
        {"attn.indexer.compressor.wkv.weight", "indexer_compressor_kv.weight"},
        {"attn.indexer.compressor.wgate.weight", "indexer_compressor_gate.weight"},
        {"attn.indexer.compressor.norm.weight", "indexer_compressor_norm.weight"},
        {"ffn.gate.weight", "ffn_gate_inp.weight"}, {"ffn.gate.bias", "exp_probs_b.bias"},
        {"ffn.gate.tid2eid", "ffn_gate_tid2eid.weight"},
        {"ffn.shared_experts.w1.weight", "ffn_gate_shexp.weight"},
        {"ffn.shared_experts.w3.weight", "ffn_up_shexp.weight"},
        {"ffn.shared_experts.w2.weight", "ffn_down_shexp.weight"},
    };
    *row = 0;
    for (size_t i = 0; i < sizeof(globals) / sizeof(globals[0]); i++)
        if (strcmp(off, globals[i][0]) == 0) {
            snprintf(out, cap, "%s", globals[i][1]);
            return true;
        }
    unsigned il, e;
    int used = 0;
    if (sscanf(off, "layers.%u.%n", &il, &used) != 1 || !used) return false;
    const char *rest = off + used;
    char w[4];
    if (sscanf(rest, "ffn.experts.%u.%3[w123].weight", &e, w) == 2) {
        const char *g = strcmp(w, "w1") == 0 ? "ffn_gate_exps" : strcmp(w, "w3") == 0
                                                                     ? "ffn_up_exps"
                                                                     : "ffn_down_exps";
        snprintf(out, cap, "blk.%u.%s.weight", il, g);
        *row = (uint64_t)e * (strcmp(w, "w2") == 0 ? n_embd : n_ff);
        return true;
    }
    for (size_t i = 0; i < sizeof(layer) / sizeof(layer[0]); i++)
        if (strcmp(rest, layer[i][0]) == 0) {
            snprintf(out, cap, "blk.%u.%s", il, layer[i][1]);
            return true;
        }
    return false;
}

/* Every tensor of the f32 reference folder equals its GGUF tensor bit for
 * bit (tid2eid: I64 ids = I32 ids); every GGUF tensor is covered. */
static int check_all_exact(const gguf_file *g, const ds4_model *m, const char *ref) {
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, ref, &err) == 0, "%s", err.msg);
    uint64_t covered_rows = 0, gguf_rows = 0;
    int rc = 0;
    for (uint64_t i = 0; rc == 0 && i < s.n_tensors; i++) {
        const st_tensor *t = &s.tensors[i];
        char gname[96];
        uint64_t row;
        if (!gguf_name_of(t->name, m->hp.n_ff_exp, m->hp.n_embd, gname, sizeof(gname), &row)) {
            fprintf(stderr, "    no GGUF name for '%s'\n", t->name);
            rc = 1;
            break;
        }
        const gguf_tensor *gt = gguf_find_tensor(g, gname);
        if (!gt || (t->dtype == ST_I64 ? gt->type != DS4_TYPE_I32 : gt->type != DS4_TYPE_F32)) {
            fprintf(stderr, "    %s: missing or not F32/I32\n", gname);
            rc = 1;
            break;
        }
        covered_rows += t->n_elements / gt->ne[0];
        uint64_t bad = 0;
        if (t->dtype == ST_I64) {
            int64_t *v = malloc(t->n_elements * sizeof(int64_t));
            rc = !v || st_read_i64(&s, t, 0, t->n_elements, v, &err);
            for (uint64_t k = 0; rc == 0 && k < t->n_elements; k++) {
                int32_t x;
                memcpy(&x, gt->data + 4 * k, 4);
                bad += x != v[k];
            }
            free(v);
        } else {
            const uint8_t *src = t->data, *dst = gt->data + row * gt->ne[0] * 4;
            bad = memcmp(src, dst, (size_t)t->nbytes) != 0; /* both little-endian f32 */
        }
        if (rc || bad) {
            fprintf(stderr, "    %s (%s row %" PRIu64 "): %" PRIu64 " values differ %s\n", t->name,
                    gname, row, bad, err.msg);
            rc = 1;
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        gguf_rows += g->tensors[i].ne[1] * g->tensors[i].ne[2] * g->tensors[i].ne[3];
    st_close(&s);
    T_CHECK(rc == 0, "values");
    T_CHECK(covered_rows == gguf_rows, "%" PRIu64 " of %" PRIu64 " GGUF rows checked",
            covered_rows, gguf_rows);
    return 0;
}

static int test_fp8_exact_f32(void) {
    char dir[256], in[512], ref[512], out[600], rout[600], log[600];
    scratch(dir, sizeof(dir), "exact");
    snprintf(in, sizeof(in), "%s/fp8", dir);
    snprintf(ref, sizeof(ref), "%s/ref", dir);
    snprintf(out, sizeof(out), "%s/fp8.gguf", dir);
    snprintf(rout, sizeof(rout), "%s/ref.gguf", dir);
    snprintf(log, sizeof(log), "%s/log", dir);
    T_CHECK(make_model(in, ref, "tiny-a", "fp8") == 0,
            "make_model.py --encoding official-fp8 (python3 + numpy + ml_dtypes needed)");
    /* The encodings really are the official ones. */
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, in, &err) == 0, "%s", err.msg);
    const st_tensor *wq = st_find(&s, "layers.2.attn.wq_b.weight");
    const st_tensor *wqs = st_find(&s, "layers.2.attn.wq_b.scale");
    const st_tensor *ex = st_find(&s, "layers.4.ffn.experts.7.w2.weight");
    const st_tensor *exs = st_find(&s, "layers.4.ffn.experts.7.w2.scale");
    T_CHECK(wq && wq->dtype == ST_F8_E4M3 && wqs && wqs->dtype == ST_F8_E8M0 &&
            wqs->shape[0] == 2 && wqs->shape[1] == 1, "FP8 wq_b and its 128x128 scales");
    T_CHECK(ex && ex->dtype == ST_I8 && ex->shape[0] == 256 && ex->shape[1] == 128 && exs &&
            exs->dtype == ST_F8_E8M0 && exs->shape[1] == 8, "FP4 expert and its 1x32 scales");
    T_CHECK(st_find(&s, "embed.weight")->dtype == ST_BF16 &&
            st_find(&s, "layers.0.hc_attn_fn")->dtype == ST_F32, "BF16 / F32 rest");
    st_close(&s);

    T_CHECK(convert(in, out, "f32", 2, log) == 0 && tc_file_has(log, ""), "convert fp8");
    T_CHECK(convert(ref, rout, "f32", 1, log) == 0, "convert reference");
    T_CHECK(tc_same_bytes(out, rout), "fp8 and its dequantization give different f32 GGUFs");
    gguf_file g;
    ds4_model m;
    T_CHECK(gguf_open(&g, out, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_model_bind(&m, &g, &err) == 0, "%s", err.msg);
    int rc = check_all_exact(&g, &m, ref);
    gguf_close(&g);
    if (rc) return rc;

    /* The engine runs it: a few tokens, finite logits. */
    ds4_engine_opts eo = {.model_path = out};
    ds4_engine *e = NULL;
    ds4_session *se = NULL;
    rc = ds4_engine_load(&e, &eo, &err);
    const int32_t toks[6] = {1, 17, 42, 300, 5, 99};
    if (rc == 0) rc = ds4_session_new(e, 16, &se, &err);
    if (rc == 0) rc = ds4_session_eval(se, toks, 6, NULL, &err);
    const float *lg = rc == 0 ? ds4_session_logits(se) : NULL;
    uint32_t n_vocab = e ? ds4_engine_model(e)->hp.n_vocab : 0;
    bool finite = lg != NULL;
    float amax = 0.0f;
    for (uint32_t i = 0; finite && i < n_vocab; i++) {
        finite = isfinite(lg[i]);
        amax = fabsf(lg[i]) > amax ? fabsf(lg[i]) : amax;
    }
    ds4_session_free(se);
    ds4_engine_free(e);
    T_CHECK(rc == 0, "engine: %s", err.msg);
    T_CHECK(finite && amax > 0.0f, "logits not finite / all zero");
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Recipes from the FP8 checkpoint                                         */
/* ---------------------------------------------------------------------- */

/* The published per-class types of recipe k (0 q8_0, 1 q4, 2 q2). */
static int check_recipe_types(const char *path, int k) {
    static const uint32_t gate[3] = {DS4_TYPE_Q8_0, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    static const uint32_t down[3] = {DS4_TYPE_Q8_0, DS4_TYPE_Q4_K, DS4_TYPE_Q2_K};
    gguf_file g;
    ds4_model m;
    ds4_error err = {{0}};
    T_CHECK(gguf_open(&g, path, &err) == 0, "%s", err.msg);
    int rc = ds4_model_bind(&m, &g, &err) == 0 ? 0 : 1;
    if (rc) fprintf(stderr, "    %s\n", err.msg);
    const struct {
        const char *name;
        uint32_t type;
    } types[] = {
        {"blk.1.ffn_gate_exps.weight", gate[k]}, {"blk.2.ffn_up_exps.weight", gate[k]},
        {"blk.0.ffn_down_exps.weight", down[k]},
        {"blk.1.attn_q_a.weight", DS4_TYPE_Q8_0}, {"blk.1.attn_q_b.weight", DS4_TYPE_Q8_0},
        {"blk.1.attn_kv.weight", DS4_TYPE_Q8_0}, {"blk.2.attn_output_a.weight", DS4_TYPE_Q8_0},
        {"blk.2.attn_output_b.weight", DS4_TYPE_Q8_0},
        {"blk.0.ffn_gate_shexp.weight", DS4_TYPE_Q8_0},
        {"blk.1.ffn_down_shexp.weight", DS4_TYPE_Q8_0}, {"output.weight", DS4_TYPE_Q8_0},
        {"token_embd.weight", DS4_TYPE_F16}, {"blk.0.hc_attn_fn.weight", DS4_TYPE_F16},
        {"output_hc_fn.weight", DS4_TYPE_F16}, {"blk.2.ffn_gate_inp.weight", DS4_TYPE_F16},
        {"blk.1.attn_compressor_kv.weight", DS4_TYPE_F16},
        {"blk.1.attn_compressor_ape.weight", DS4_TYPE_F16},
        {"blk.1.indexer.attn_q_b.weight", DS4_TYPE_F16},
        {"blk.1.indexer.proj.weight", DS4_TYPE_F16},
        {"blk.1.indexer_compressor_gate.weight", DS4_TYPE_F16},
        {"blk.1.attn_norm.weight", DS4_TYPE_F32}, {"output_norm.weight", DS4_TYPE_F32},
        {"blk.1.attn_sinks.weight", DS4_TYPE_F32}, {"blk.2.exp_probs_b.bias", DS4_TYPE_F32},
        {"blk.0.hc_ffn_base.weight", DS4_TYPE_F32},
        {"blk.1.attn_compressor_norm.weight", DS4_TYPE_F32},
        {"blk.0.ffn_gate_tid2eid.weight", DS4_TYPE_I32},
    };
    for (size_t i = 0; rc == 0 && i < sizeof(types) / sizeof(types[0]); i++)
        rc = tc_expect_type(&g, types[i].name, types[i].type);
    gguf_close(&g);
    return rc;
}

/* q8_0 / q4 / q2 of the FP8 checkpoint: the bytes of the same recipe of its
 * f32 dequantization, and the published types.  (IQ2_XXS and the K-quants
 * are slow: q4 and q2 run on the one-expert model; q2 only once, its bytes
 * following from the f32 and q4 identities, since every recipe quantizes
 * the same f32 rows.) */
static int test_fp8_recipes(void) {
    char dir[256], in[512], ref[512], in1[512], ref1[512], out[600], rout[600], log[600];
    scratch(dir, sizeof(dir), "recipes");
    snprintf(in, sizeof(in), "%s/fp8", dir);
    snprintf(ref, sizeof(ref), "%s/ref", dir);
    snprintf(in1, sizeof(in1), "%s/fp8-1", dir);
    snprintf(ref1, sizeof(ref1), "%s/ref-1", dir);
    snprintf(log, sizeof(log), "%s/log", dir);
    T_CHECK(make_model(in, ref, "mini", "fp8") == 0, "make_model.py mini official-fp8");
    T_CHECK(make_model(in1, ref1, "mini1", "fp8") == 0, "make_model.py mini1 official-fp8");
    static const char *const kinds[3] = {"q8_0", "q4", "q2"};
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof(out), "%s/fp8-%s.gguf", dir, kinds[k]);
        snprintf(rout, sizeof(rout), "%s/ref-%s.gguf", dir, kinds[k]);
        T_CHECK(convert(k ? in1 : in, out, kinds[k], 2, log) == 0, "convert %s", kinds[k]);
        if (k < 2) {
            T_CHECK(convert(k ? ref1 : ref, rout, kinds[k], 1, log) == 0, "convert reference %s",
                    kinds[k]);
            T_CHECK(tc_same_bytes(out, rout), "%s: fp8 and its dequantization differ", kinds[k]);
        }
        if (check_recipe_types(out, k)) return 1;
    }
    /* Any thread count gives the same bytes. */
    snprintf(out, sizeof(out), "%s/fp8-q8_0.gguf", dir);
    snprintf(rout, sizeof(rout), "%s/t.gguf", dir);
    T_CHECK(convert(in, rout, "q8_0", 1, log) == 0 && tc_same_bytes(out, rout), "--threads 1");
    T_CHECK(convert(in, rout, "q8_0", 3, log) == 0 && tc_same_bytes(out, rout), "--threads 3");
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Bad scales                                                              */
/* ---------------------------------------------------------------------- */

/* The header of dir/model.safetensors (parsed), its length, and the file. */
typedef struct stfile {
    char path[800];
    uint8_t *bytes;
    size_t len;
    uint64_t hlen;
    cJSON *hdr;
} stfile;

static bool st_load(stfile *f, const char *dir) {
    memset(f, 0, sizeof(*f));
    snprintf(f->path, sizeof(f->path), "%s/model.safetensors", dir);
    f->bytes = (uint8_t *)tc_slurp(f->path, &f->len);
    if (!f->bytes || f->len < 8) return false;
    for (int i = 7; i >= 0; i--) f->hlen = (f->hlen << 8) | f->bytes[i];
    f->hdr = cJSON_ParseWithLength((const char *)f->bytes + 8, (size_t)f->hlen);
    return f->hdr != NULL;
}

/* Write the (edited) header and the original data back. */
static bool st_store(stfile *f) {
    char *text = cJSON_PrintUnformatted(f->hdr);
    size_t tl = text ? strlen(text) : 0, dl = f->len - 8 - f->hlen;
    uint8_t *out = text ? malloc(8 + tl + dl) : NULL;
    bool ok = out != NULL;
    if (ok) {
        for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)tl >> (8 * i));
        memcpy(out + 8, text, tl);
        memcpy(out + 8 + tl, f->bytes + 8 + f->hlen, dl);
        ok = tc_spit(f->path, out, 8 + tl + dl);
    }
    free(out);
    free(text);
    return ok;
}

static void st_unload(stfile *f) {
    cJSON_Delete(f->hdr);
    free(f->bytes);
}

/* Set byte `at` of tensor `name`'s data. */
static bool st_poke(stfile *f, const char *name, uint64_t at, uint8_t v) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(f->hdr, name);
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!off || !cJSON_IsNumber(off->child)) return false;
    uint64_t pos = 8 + f->hlen + (uint64_t)off->child->valuedouble + at;
    if (pos >= f->len) return false;
    f->bytes[pos] = v;
    return true;
}

typedef struct scale_case {
    const char *name;
    const char *del, *dtype_of, *dtype, *shape_of, *dup_of; /* header edits */
    const char *poke;  /* tensor whose byte 0 becomes poke_val */
    uint8_t poke_val;
    const char *cfg_from, *cfg_to;
    const char *want;
} scale_case;

static int run_scale_case(const char *dir, const char *good, const scale_case *c) {
    char in[600], out[700], log[700];
    snprintf(in, sizeof(in), "%s/%s", dir, c->name);
    snprintf(out, sizeof(out), "%s/%s.gguf", dir, c->name);
    snprintf(log, sizeof(log), "%s/%s.log", dir, c->name);
    T_CHECK(tc_sh("cp -r '%s' '%s'", good, in) == 0, "copy");
    stfile f;
    T_CHECK(st_load(&f, in), "%s: load", c->name);
    bool ok = true;
    if (c->del) cJSON_DeleteItemFromObjectCaseSensitive(f.hdr, c->del);
    if (c->dtype_of)
        ok = cJSON_ReplaceItemInObjectCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(f.hdr, c->dtype_of), "dtype",
            cJSON_CreateString(c->dtype));
    if (ok && c->shape_of) { /* the two dims swapped: same size, wrong shape */
        cJSON *sh2 = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(f.hdr, c->shape_of), "shape");
        ok = sh2 && cJSON_GetArraySize(sh2) == 2;
        if (ok) {
            const int shape[2] = {cJSON_GetArrayItem(sh2, 1)->valueint,
                                  cJSON_GetArrayItem(sh2, 0)->valueint};
            ok = cJSON_ReplaceItemInObjectCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(f.hdr, c->shape_of), "shape",
                cJSON_CreateIntArray(shape, 2));
        }
    }
    if (ok && c->dup_of) { /* a second (empty) scale under transformers' name */
        cJSON *d = cJSON_Parse("{\"dtype\":\"F8_E8M0\",\"shape\":[0],\"data_offsets\":[0,0]}");
        char nm[200];
        snprintf(nm, sizeof(nm), "%.*s.weight_scale_inv", (int)(strlen(c->dup_of) - 6), c->dup_of);
        ok = d && cJSON_AddItemToObject(f.hdr, nm, d);
    }
    if (ok && c->poke) ok = st_poke(&f, c->poke, 0, c->poke_val);
    ok = ok && st_store(&f);
    st_unload(&f);
    T_CHECK(ok, "%s: edit", c->name);
    if (c->cfg_from) {
        char cfg[700];
        snprintf(cfg, sizeof(cfg), "%s/config.json", in);
        char *text = tc_slurp(cfg, NULL);
        char *at = text ? strstr(text, c->cfg_from) : NULL;
        T_CHECK(at, "%s: config edit", c->name);
        FILE *fp = fopen(cfg, "wb");
        T_CHECK(fp, "write %s", cfg);
        fprintf(fp, "%.*s%s%s", (int)(at - text), text, c->cfg_to, at + strlen(c->cfg_from));
        fclose(fp);
        free(text);
    }
    int rc = convert(in, out, "q8_0", 2, log);
    T_CHECK(rc == 1, "%s: exit %d, expected 1", c->name, rc);
    T_CHECK(tc_file_has(log, c->want), "%s: message", c->name);
    char tmp[800];
    snprintf(tmp, sizeof(tmp), "%s.tmp", out);
    T_CHECK(!tc_exists(out) && !tc_exists(tmp), "%s: output left behind", c->name);
    snprintf(tmp, sizeof(tmp), "%s.tmp.journal", out);
    T_CHECK(!tc_exists(tmp), "%s: journal left behind", c->name);
    return 0;
}

static int test_bad_scales(void) {
    char dir[256], good[512], ref[512];
    scratch(dir, sizeof(dir), "badscale");
    snprintf(good, sizeof(good), "%s/good", dir);
    snprintf(ref, sizeof(ref), "%s/ref", dir);
    T_CHECK(make_model(good, ref, "mini", "fp8") == 0, "make_model.py mini official-fp8");
    const scale_case cases[] = {
        {.name = "no-scale", .del = "layers.1.attn.wq_a.scale",
         .want = "'layers.1.attn.wq_a.weight': dtype F8_E4M3 (FP8 codes) without its scale "
                 "tensor 'layers.1.attn.wq_a.scale'"},
        {.name = "no-fp4-scale", .del = "layers.2.ffn.experts.1.w2.scale",
         .want = "dtype I8 (FP4 codes) without its scale tensor 'layers.2.ffn.experts.1.w2.scale'"},
        {.name = "scale-shape", .shape_of = "layers.0.attn.wo_b.scale",
         .want = "'layers.0.attn.wo_b.scale': shape (1, 2), expected (2, 1) for "
                 "'layers.0.attn.wo_b.weight' of 256x64 values in blocks of 128x128"},
        {.name = "scale-dtype", .dtype_of = "layers.0.attn.wkv.scale", .dtype = "I8",
         .want = "'layers.0.attn.wkv.scale': scale dtype I8"},
        {.name = "scaled-e5m2", .dtype_of = "layers.0.attn.wkv.weight", .dtype = "F8_E5M2",
         .want = "dtype F8_E5M2 has a scale tensor 'layers.0.attn.wkv.scale'"},
        {.name = "nan-scale", .poke = "layers.1.ffn.shared_experts.w3.scale", .poke_val = 0xff,
         .want = "'layers.1.ffn.shared_experts.w3.scale': block (0, 0) scale is nan"},
        {.name = "nan-code", .poke = "layers.0.attn.wq_b.weight", .poke_val = 0x7f,
         .want = "'layers.0.attn.wq_b.weight': element (0, 0) is a NaN code (0x7f)"},
        {.name = "two-scales", .dup_of = "layers.2.attn.wkv.scale",
         .want = "has two scale tensors"},
        {.name = "block-size", .cfg_from = "\"weight_block_size\": [\n      128,\n      128\n    ]",
         .cfg_to = "\"weight_block_size\": [64, 64]",
         .want = "expected (1, 4) for 'layers.0.attn.wq_a.weight' of 32x256 values in blocks "
                 "of 64x64"},
        {.name = "fp4-shape", .shape_of = "layers.1.ffn.experts.0.w1.weight",
         .want = "'layers.1.ffn.experts.0.w1.weight': shape (128, 512) (FP4 codes, two per "
                 "byte), expected (256, 256)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (run_scale_case(dir, good, &cases[i])) return 1;
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Bounded memory                                                          */
/* ---------------------------------------------------------------------- */

/* Run the converter, stdout/stderr to log; its exit status and peak RSS.
 * The measuring parent is a small python3 process (RUSAGE_CHILDREN of the
 * converter it spawns): a child forked straight from this runner would
 * inherit the runner's own high-water mark across exec. */
static int run_child_rss(const char *in, const char *out, const char *type, const char *log,
                         uint64_t *rss) {
    char bin[600], res[700];
    converter(bin, sizeof(bin));
    snprintf(res, sizeof(res), "%s.rss", log);
    int rc = tc_sh("python3 -c 'import resource, subprocess, sys\n"
                   "rc = subprocess.call(sys.argv[2:])\n"
                   "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                   "open(sys.argv[1], \"w\").write(\"%%d %%d\\n\" %% (rc, ru.ru_maxrss))' '%s' "
                   "'%s' '%s' '%s' --type %s --threads 2 >'%s' 2>&1", res, bin, in, out, type, log);
    char *text = tc_slurp(res, NULL);
    long long code = -1, kib = 0;
    if (rc != 0 || !text || sscanf(text, "%lld %lld", &code, &kib) != 2) code = -1;
    free(text);
    *rss = (uint64_t)kib * 1024;
    return (int)code;
}

static int test_streaming_memory(void) {
    char dir[256], in[512], small[512], out[600], log[600];
    scratch(dir, sizeof(dir), "rss");
    snprintf(in, sizeof(in), "%s/big", dir);
    snprintf(small, sizeof(small), "%s/mini", dir);
    snprintf(out, sizeof(out), "%s/out.gguf", dir);
    snprintf(log, sizeof(log), "%s/log", dir);
    T_CHECK(make_model(in, NULL, "big", "bf16") == 0, "make_model.py big");
    T_CHECK(make_model(small, NULL, "mini", "bf16") == 0, "make_model.py mini");
    struct stat st;
    T_CHECK(tc_sh("test -f '%s/model.safetensors'", in) == 0, "no big model");
    char path[700];
    snprintf(path, sizeof(path), "%s/model.safetensors", in);
    T_CHECK(stat(path, &st) == 0 && st.st_size > 200 * 1000 * 1000, "big model is %lld bytes",
            (long long)st.st_size);
    uint64_t rss_big = 0, rss_small = 0;
    T_CHECK(run_child_rss(small, out, "f16", log, &rss_small) == 0, "convert mini");
    int rc = run_child_rss(in, out, "f16", log, &rss_big);
    T_CHECK(rc == 0 && tc_file_has(log, "written: "), "convert big: exit %d", rc);
    T_CHECK(stat(out, &st) == 0 && st.st_size > 200 * 1000 * 1000, "output");
    gguf_file g;
    ds4_model m;
    ds4_error err = {{0}};
    T_CHECK(gguf_open(&g, out, &err) == 0 && ds4_model_bind(&m, &g, &err) == 0, "%s", err.msg);
    gguf_close(&g);
    fprintf(stderr, "    peak RSS: %.1f MiB converting %.1f MiB (mini: %.1f MiB)\n",
            (double)rss_big / 1048576.0, (double)st.st_size / 1048576.0,
            (double)rss_small / 1048576.0);
    T_CHECK(rss_big < 100u * 1024 * 1024, "peak RSS %.1f MiB >= 100 MiB",
            (double)rss_big / 1048576.0);
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Resume                                                                  */
/* ---------------------------------------------------------------------- */

/* Converter with DS4CL_CONVERT_STOP_AFTER (stop < 0: none), not quiet,
 * stderr to log: the exit status. */
static int convert_stop(const char *in, const char *out, const char *type, int threads, int stop,
                        const char *log) {
    char bin[600], env[64] = "";
    if (stop >= 0) snprintf(env, sizeof(env), "DS4CL_CONVERT_STOP_AFTER=%d ", stop);
    return tc_sh("%s'%s' '%s' '%s' --type %s --name tiny --threads %d >/dev/null 2>'%s'", env,
                 converter(bin, sizeof(bin)), in, out, type, threads, log);
}

/* End offset of tensor i as recorded by the journal, or 0. */
static uint64_t journal_end(const char *jpath, uint64_t want) {
    FILE *fp = fopen(jpath, "r");
    char line[200];
    uint64_t i, end, h, found = 0;
    while (fp && fgets(line, sizeof(line), fp))
        if (sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNx64, &i, &end, &h) == 3 && i == want)
            found = end;
    if (fp) fclose(fp);
    return found;
}

static int test_resume(void) {
    char dir[256], in[512], ref[512], whole[600], out[600], tmp[700], jp[800], log[600];
    scratch(dir, sizeof(dir), "resume");
    snprintf(in, sizeof(in), "%s/fp8", dir);
    snprintf(ref, sizeof(ref), "%s/ref", dir);
    snprintf(whole, sizeof(whole), "%s/whole.gguf", dir);
    snprintf(out, sizeof(out), "%s/out.gguf", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", out);
    snprintf(jp, sizeof(jp), "%s.journal", tmp);
    snprintf(log, sizeof(log), "%s/log", dir);
    T_CHECK(make_model(in, ref, "tiny-a", "fp8") == 0, "make_model.py tiny-a official-fp8");
    T_CHECK(convert_stop(in, whole, "q8_0", 2, -1, log) == 0, "uninterrupted run");
    T_CHECK(tc_file_has(log, "[178/178] output.weight"), "progress line");

    /* Stopped in tensor 40, then in 120 (one thread), then finished (three). */
    T_CHECK(convert_stop(in, out, "q8_0", 2, 40, log) == 75, "stop at 40");
    T_CHECK(!tc_exists(out) && tc_exists(tmp) && tc_exists(jp), "partial files after a stop");
    T_CHECK(journal_end(jp, 39) > 0 && journal_end(jp, 40) == 0, "journal has 0..39");
    T_CHECK(convert_stop(in, out, "q8_0", 1, 120, log) == 75, "stop at 120");
    T_CHECK(tc_file_has(log, "resuming ") && tc_file_has(log, " after 40 of 178 tensors"),
            "resumed");
    T_CHECK(convert_stop(in, out, "q8_0", 3, -1, log) == 0, "finish");
    T_CHECK(tc_file_has(log, " after 120 of 178 tensors"), "resumed at 120");
    T_CHECK(tc_same_bytes(out, whole), "resumed output differs from the uninterrupted one");
    T_CHECK(!tc_exists(tmp) && !tc_exists(jp), "partial files left after success");

    /* Corrupt tensor 60 of a partial file: the run resumes after 59. */
    unlink(out);
    T_CHECK(convert_stop(in, out, "q8_0", 2, 100, log) == 75, "stop at 100");
    uint64_t at = journal_end(jp, 59) + 5;
    int fd = open(tmp, O_WRONLY);
    uint8_t junk = 0x5a;
    T_CHECK(fd >= 0 && at > 5 && pwrite(fd, &junk, 1, (off_t)at) == 1, "corrupt");
    close(fd);
    T_CHECK(convert_stop(in, out, "q8_0", 2, -1, log) == 0, "finish after corruption");
    T_CHECK(tc_file_has(log, " after 60 of 178 tensors"), "resumed after the last good tensor");
    T_CHECK(tc_same_bytes(out, whole), "output after corruption differs");

    /* Another --type never trusts the partial file. */
    unlink(out);
    T_CHECK(convert_stop(in, out, "q8_0", 2, 30, log) == 75, "stop at 30");
    T_CHECK(convert_stop(ref, out, "f32", 2, -1, log) == 0, "other input and type");
    T_CHECK(tc_file_has(log, "not resuming") && tc_file_has(log, "another input"), "key mismatch");
    T_CHECK(convert(in, whole, "f32", 2, log) == 0 && tc_same_bytes(out, whole), "restart bytes");

    /* A write error (the file size limit, as a full disk would) keeps the
     * partial file and the journal; the next run resumes from them. */
    unlink(out);
    char bin[600];
    T_CHECK(tc_sh("trap '' XFSZ; ulimit -f 8000; '%s' '%s' '%s' --type q8_0 --name tiny -q "
                  "2>'%s'", converter(bin, sizeof(bin)), in, out, log) == 1,
            "size limit: exit code");
    T_CHECK(tc_file_has(log, "File too large") &&
            tc_file_has(log, ".tmp is kept: run the same command again to resume"), "message");
    T_CHECK(!tc_exists(out) && tc_exists(tmp) && tc_exists(jp), "partial files kept");
    T_CHECK(convert_stop(in, out, "q8_0", 2, -1, log) == 0 && tc_file_has(log, "resuming "),
            "resume after the write error");
    snprintf(whole, sizeof(whole), "%s/whole.gguf", dir);
    T_CHECK(convert(in, whole, "q8_0", 2, log) == 0 && tc_same_bytes(out, whole), "bytes");
    tc_scratch_rm(dir);
    return 0;
}

void tests_register_convert_official(void) {
    test_add("convert_official_scaled_reader", test_scaled_reader);
    test_add("convert_official_release_pages", test_release_pages);
    test_add("convert_official_stream_writer", test_stream_writer);
    test_add("convert_official_fp8_exact_f32", test_fp8_exact_f32);
    test_add("convert_official_fp8_recipes", test_fp8_recipes);
    test_add("convert_official_bad_scales", test_bad_scales);
    test_add("convert_official_streaming_memory", test_streaming_memory);
    test_add("convert_official_resume", test_resume);
}
