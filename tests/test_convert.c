/* test_convert.c - the safetensors reader and the ds4cl-convert program.
 *
 * Reader tests build tiny safetensors files by hand (header text + bytes)
 * and check every rejection path by its message.  Converter tests generate
 * Hugging Face folders with tests/golden/make_model.py (python3 + numpy) in
 * the three namings (saved, official, hf), run the ds4cl-convert binary next
 * to this runner (the sanitizer build under `make test`), and check that:
 *   - the three namings of one model give byte-identical GGUFs;
 *   - the GGUF binds with ds4_model_bind and carries the config's values;
 *   - tensor values match the safetensors data (f32 exact, f16 equal to the
 *     rounded source, quantized types close);
 *   - q8_0 / q2 / q4 pick the documented type per tensor class;
 *   - bad inputs (missing tensor, wrong shape, bad config values, truncated
 *     header, a scale on an F32 weight, missing folder, rows that do not fit
 *     the block size) fail with one clear line and leave no output file
 *     behind.  (FP8/FP4 checkpoints: test_convert_official.c.)
 * IQ2_XXS quantization is slow, so q2 runs once, on a 3-layer 2-expert
 * model ("mini": a make_model.py preset defined here).
 */
#include "test.h"
#include "util_convert.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/gguf.h"
#include "../src/model.h"
#include "../src/quant.h"
#include "../src/safetensors.h"

/* ---------------------------------------------------------------------- */
/* Helpers                                                                 */
/* ---------------------------------------------------------------------- */

/* Scratch folder of one test: /tmp/ds4cl-convert-<pid>-<tag>, created fresh. */
static const char *scratch(char *buf, size_t cap, const char *tag) {
    return tc_scratch(buf, cap, "ds4cl-convert", tag);
}

/* Replace the single occurrence of `from` in a text file. */
static bool file_replace(const char *path, const char *from, const char *to) {
    size_t len;
    char *s = tc_slurp(path, &len);
    char *at = s ? strstr(s, from) : NULL;
    if (!at || strstr(at + 1, from)) {
        fprintf(stderr, "    %s: \"%s\" not found exactly once\n", path, from);
        free(s);
        return false;
    }
    size_t pre = (size_t)(at - s), lf = strlen(from), lt = strlen(to);
    char *out = malloc(len - lf + lt + 1);
    bool ok = out != NULL;
    if (ok) {
        memcpy(out, s, pre);
        memcpy(out + pre, to, lt);
        memcpy(out + pre + lt, at + lf, len - pre - lf);
        ok = tc_spit(path, out, len - lf + lt);
    }
    free(out);
    free(s);
    return ok;
}

/* make_model.py into dir; preset "mini" / "mini-ff128" are defined here. */
static int make_model(const char *dir, const char *preset, const char *naming) {
    const char *root = test_root_dir();
    if (strncmp(preset, "mini", 4) != 0)
        return tc_sh("python3 '%s/tests/golden/make_model.py' --preset %s --out '%s' --naming %s",
                     root, preset, dir, naming);
    int ff = strcmp(preset, "mini-ff128") == 0 ? 128 : 256;
    return tc_sh("python3 -c 'import sys; sys.path.insert(0, \"%s/tests/golden\")\n"
                 "import make_model as m\n"
                 "p = dict(m.PRESETS[\"tiny-a\"])\n"
                 "p.update(seed=\"ds4cl-convert-mini\", vocab_size=64, num_hidden_layers=3,\n"
                 "  compress_ratios=[0, 4, 128], num_hash_layers=1, num_attention_heads=2,\n"
                 "  head_dim=64, q_lora_rank=32, o_groups=2, o_lora_rank=32, n_routed_experts=2,\n"
                 "  num_experts_per_tok=1, index_n_heads=2, index_topk=4,\n"
                 "  moe_intermediate_size=%d)\n"
                 "m.PRESETS[\"mini\"] = p\n"
                 "m.write_model(\"mini\", \"%s\", \"%s\")'", root, ff, dir, naming);
}

/* Run the converter; its stderr goes to log.  The exit status. */
static int convert(const char *in, const char *out, const char *type, const char *log) {
    return tc_sh("'%s/ds4cl-convert' '%s' '%s' --type %s --name tiny --threads 2 -q 2>'%s'",
                 test_bin_dir(), in, out, type, log);
}

/* Dequantize rows [row, row+n) of a GGUF tensor into a new buffer. */
static float *deq_rows(const gguf_tensor *t, uint64_t row, uint64_t n) {
    uint64_t rb = ds4_row_bytes(t->type, t->ne[0]);
    float *v = malloc(n * t->ne[0] * sizeof(float));
    for (uint64_t r = 0; v && r < n; r++)
        if (ds4_dequantize_row(t->type, t->data + (row + r) * rb, v + r * t->ne[0], t->ne[0])) {
            free(v);
            return NULL;
        }
    return v;
}

/* How a converted tensor is compared with its source. */
enum { CMP_EXACT, CMP_F16, CMP_CLOSE };

/* Rows [row, ...) of GGUF tensor gname against all of safetensors sname.
 * CMP_CLOSE: relative RMS error <= tol. */
static int cmp_tensor(const gguf_file *g, const char *gname, uint64_t row, const st_set *s,
                      const char *sname, int mode, double tol) {
    const gguf_tensor *t = gguf_find_tensor(g, gname);
    const st_tensor *src = st_find(s, sname);
    T_CHECK(t && src, "tensor %s / %s", gname, sname);
    T_CHECK(src->n_elements % t->ne[0] == 0, "%s: %" PRIu64 " values vs rows of %" PRIu64, sname,
            src->n_elements, t->ne[0]);
    uint64_t n = src->n_elements / t->ne[0];
    float *ref = malloc(src->n_elements * sizeof(float));
    float *got = deq_rows(t, row, n);
    T_CHECK(ref && got, "alloc/dequantize %s", gname);
    ds4_error err = {{0}};
    int rc = st_read_f32(s, src, 0, src->n_elements, ref, &err);
    double se = 0, sr = 0, maxd = 0;
    for (uint64_t i = 0; rc == 0 && i < src->n_elements; i++) {
        float want = mode == CMP_F16 ? ds4_f16_to_f32(ds4_f32_to_f16(ref[i])) : ref[i];
        double d = fabs((double)got[i] - want);
        maxd = d > maxd ? d : maxd;
        se += d * d;
        sr += (double)ref[i] * ref[i];
    }
    free(ref);
    free(got);
    T_CHECK(rc == 0, "%s", err.msg);
    if (mode != CMP_CLOSE) T_CHECK(maxd == 0.0, "%s vs %s: max |diff| %g", gname, sname, maxd);
    else T_CHECK(sqrt(se / sr) <= tol, "%s vs %s: relative RMS error %g > %g", gname, sname,
                 sqrt(se / sr), tol);
    return 0;
}

/* Open and bind a converted file (the caller closes g). */
static int open_bound(gguf_file *g, ds4_model *m, const char *path) {
    ds4_error err = {{0}};
    T_CHECK(gguf_open(g, path, &err) == 0, "%s", err.msg);
    T_CHECK(ds4_model_bind(m, g, &err) == 0, "%s", err.msg);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Safetensors reader                                                      */
/* ---------------------------------------------------------------------- */

/* Opening a folder holding one file with this header (and 64 data bytes)
 * must fail with a message containing want. */
static int st_rejects(const char *dir, const char *header, const char *want) {
    uint8_t data[64] = {0};
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    T_CHECK(tc_write_st(path, header, data, sizeof(data)), "write %s", path);
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, dir, &err) != 0, "accepted header %s", header);
    T_CHECK(strstr(err.msg, want) != NULL, "header %s: message '%s' lacks '%s'", header,
            err.msg, want);
    T_CHECK(strstr(err.msg, "model.safetensors") != NULL || strstr(err.msg, "index") != NULL,
            "message '%s' does not name the file", err.msg);
    return 0;
}

static int test_reader_good(void) {
    char dir[256], path[512];
    scratch(dir, sizeof(dir), "reader-good");
    /* a: F32 [2,3]; b: F16 [2]; c: BF16 [1]; d: I64 [2]; e: I32 [1] (unaligned) */
    uint8_t data[64];
    float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.125f, 1e-3f};
    uint16_t b[2] = {ds4_f32_to_f16(0.5f), ds4_f32_to_f16(-3.0f)};
    uint16_t c = ds4_f32_to_bf16(7.0f);
    int64_t d[2] = {-5, 1234567890123};
    int32_t e = -7;
    memcpy(data, a, 24);
    memcpy(data + 24, b, 4);
    memcpy(data + 28, &c, 2);
    memcpy(data + 30, d, 16);
    memcpy(data + 46, &e, 4);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    T_CHECK(tc_write_st(path, "{\"__metadata__\":{\"format\":\"pt\"},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                        "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[24,28]},"
                        "\"c\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[28,30]},"
                        "\"d\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[30,46]},"
                        "\"e\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[46,50]},"
                        "\"z\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]}}   ",
                        data, 50), "write");
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, dir, &err) == 0, "%s", err.msg);
    T_CHECK(s.n_tensors == 6, "%" PRIu64 " tensors", s.n_tensors);
    const st_tensor *t = st_find(&s, "a");
    T_CHECK(t && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->dtype == ST_F32,
            "a");
    float f[6];
    int64_t iv[2];
    T_CHECK(st_read_f32(&s, t, 0, 6, f, &err) == 0 && memcmp(f, a, 24) == 0, "a values");
    T_CHECK(st_read_f32(&s, t, 4, 2, f, &err) == 0 && f[0] == -0.125f && f[1] == 1e-3f, "a[4:]");
    T_CHECK(st_read_f32(&s, t, 5, 2, f, &err) != 0 && strstr(err.msg, "'a'"), "range: %s",
            err.msg);
    T_CHECK(st_read_f32(&s, st_find(&s, "b"), 0, 2, f, &err) == 0 && f[0] == 0.5f &&
            f[1] == -3.0f, "b");
    T_CHECK(st_read_f32(&s, st_find(&s, "c"), 0, 1, f, &err) == 0 && f[0] == 7.0f, "c");
    T_CHECK(st_read_i64(&s, st_find(&s, "d"), 0, 2, iv, &err) == 0 && iv[0] == -5 &&
            iv[1] == 1234567890123, "d");
    t = st_find(&s, "e");
    T_CHECK(t && t->n_dims == 0 && t->n_elements == 1, "scalar e");
    T_CHECK(st_read_i64(&s, t, 0, 1, iv, &err) == 0 && iv[0] == -7, "e");
    T_CHECK(st_read_f32(&s, st_find(&s, "d"), 0, 1, f, &err) != 0 &&
            strstr(err.msg, "I64 cannot be read as f32"), "%s", err.msg);
    T_CHECK(st_find(&s, "zz") == NULL && st_find(&s, "z")->n_elements == 0, "find");
    st_close(&s);

    /* Two shards with an index. */
    float one = 1.0f, two = 2.0f;
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/s1.safetensors", dir);
    T_CHECK(tc_write_st(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        &one, 4), "s1");
    snprintf(path, sizeof(path), "%s/s2.safetensors", dir);
    T_CHECK(tc_write_st(path, "{\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        &two, 4), "s2");
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"s1.safetensors\","
                      "\"y\":\"s2.safetensors\"}}";
    T_CHECK(tc_spit(path, idx, strlen(idx)), "index");
    T_CHECK(st_open_dir(&s, dir, &err) == 0, "%s", err.msg);
    T_CHECK(s.n_shards == 2 && s.n_tensors == 2, "shards");
    T_CHECK(st_read_f32(&s, st_find(&s, "y"), 0, 1, f, &err) == 0 && f[0] == 2.0f, "y");
    T_CHECK(strstr(st_path(&s, st_find(&s, "y")), "s2.safetensors"), "path");
    st_close(&s);
    /* The index names the wrong shard. */
    idx = "{\"weight_map\":{\"x\":\"s2.safetensors\",\"y\":\"s2.safetensors\"}}";
    T_CHECK(tc_spit(path, idx, strlen(idx)), "index");
    T_CHECK(st_open_dir(&s, dir, &err) != 0 && strstr(err.msg, "'x' is listed in s2"), "%s",
            err.msg);
    /* Without an index both files are read; a name in both is rejected. */
    unlink(path);
    snprintf(path, sizeof(path), "%s/s2.safetensors", dir);
    T_CHECK(tc_write_st(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        &two, 4), "s2");
    T_CHECK(st_open_dir(&s, dir, &err) != 0 && strstr(err.msg, "'x' appears twice"), "%s",
            err.msg);
    tc_scratch_rm(dir);
    return 0;
}

static int test_reader_bad(void) {
    char dir[256], path[512];
    scratch(dir, sizeof(dir), "reader-bad");
    const struct {
        const char *header, *want;
    } cases[] = {
        {"[1,2]", "does not start with"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", "not valid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", "garbage"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", "unknown dtype 'Q4'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "span 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "shape entry 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", "shape entry 0"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[20],\"data_offsets\":[0,80]}}", "outside the 64"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "two non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}",
         "unexpected field"},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "\"dtype\""},
        {"{\"a\":[1]}", "not a JSON object"},
        {"{\"__metadata__\":{\"k\":1}}", "__metadata__"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (st_rejects(dir, cases[i].header, cases[i].want)) return 1;

    /* Header length larger than the file, and a file shorter than 8 bytes. */
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    uint8_t raw[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    T_CHECK(tc_spit(path, raw, 10), "write");
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, dir, &err) != 0 && strstr(err.msg, "header length 65535"), "%s",
            err.msg);
    T_CHECK(tc_spit(path, raw, 5), "write");
    T_CHECK(st_open_dir(&s, dir, &err) != 0 && strstr(err.msg, "too small"), "%s", err.msg);
    unlink(path);
    T_CHECK(st_open_dir(&s, dir, &err) != 0 && strstr(err.msg, "no *.safetensors"), "%s",
            err.msg);
    T_CHECK(st_open_dir(&s, "/nonexistent/ds4cl", &err) != 0 &&
            strstr(err.msg, "/nonexistent/ds4cl"), "%s", err.msg);
    tc_scratch_rm(dir);
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Converter: namings, values, types                                       */
/* ---------------------------------------------------------------------- */

/* Generate the three namings of a preset and convert each with --type;
 * the outputs must be byte-identical.  Leaves dir/<naming> and
 * dir/<naming>.gguf. */
static int convert_namings(const char *dir, const char *preset, const char *type) {
    static const char *const namings[3] = {"official", "saved", "hf"};
    char in[512], out[3][512], log[512];
    for (int i = 0; i < 3; i++) {
        snprintf(in, sizeof(in), "%s/%s", dir, namings[i]);
        snprintf(out[i], sizeof(out[i]), "%s/%s.gguf", dir, namings[i]);
        snprintf(log, sizeof(log), "%s/%s.log", dir, namings[i]);
        T_CHECK(make_model(in, preset, namings[i]) == 0, "make_model.py %s %s (python3 + numpy "
                "needed)", preset, namings[i]);
        int rc = convert(in, out[i], type, log);
        T_CHECK(rc == 0, "convert %s: exit %d", in, rc);
        T_CHECK(tc_exists(out[i]), "no %s", out[i]);
    }
    T_CHECK(tc_same_bytes(out[0], out[1]), "official and saved namings differ (%s)", preset);
    T_CHECK(tc_same_bytes(out[0], out[2]), "official and hf namings differ (%s)", preset);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", out[0]);
    T_CHECK(!tc_exists(tmp), "%s left behind", tmp);
    return 0;
}

/* Metadata of tiny-a (make_model.py) in the converted file. */
static int check_tiny_a_meta(const ds4_model *m, const gguf_file *g) {
    const ds4_hparams *hp = &m->hp;
    static const uint32_t ratios[6] = {0, 0, 4, 128, 4, 128};
    T_CHECK(hp->n_layer == 6 && hp->n_embd == 256 && hp->n_vocab == 320 && hp->n_head == 4,
            "dims");
    T_CHECK(hp->head_dim == 64 && hp->n_rot == 16 && hp->q_lora == 64 && hp->o_lora == 32 &&
            hp->o_groups == 2, "attention dims");
    T_CHECK(hp->n_expert == 8 && hp->n_expert_used == 2 && hp->n_ff_exp == 256 &&
            hp->n_hash_layers == 3, "experts");
    T_CHECK(hp->n_idx_head == 16 && hp->idx_head_dim == 32 && hp->idx_top_k == 16 &&
            hp->n_swa == 128, "indexer/window");
    T_CHECK(hp->n_hc == 4 && hp->n_sinkhorn == 20 && hp->hc_eps == 1e-6f && hp->rms_eps == 1e-6f,
            "hc");
    T_CHECK(hp->rope_base == 10000.0f && hp->rope_compress_base == 160000.0f &&
            hp->rope_scale == 16.0f && hp->yarn_beta_fast == 32.0f && hp->yarn_beta_slow == 1.0f &&
            hp->rope_orig_ctx == 65536 && hp->n_ctx_train == 1048576, "rope");
    T_CHECK(hp->expert_weights_scale == 1.5f && hp->expert_weights_norm, "routing");
    for (int il = 0; il < 6; il++)
        T_CHECK(hp->compress_ratio[il] == ratios[il] && hp->swiglu_clamp[il] == 3.0f,
                "layer %d", il);
    T_CHECK(m->layers[2].exp_probs_b == NULL && m->layers[3].exp_probs_b != NULL, "router bias");
    T_CHECK(strcmp(m->name, "tiny") == 0 && strcmp(m->arch, "deepseek4") == 0, "names");
    T_CHECK(gguf_find_kv(g, "tokenizer.ggml.tokens") == NULL, "no tokenizer expected");
    return 0;
}

/* tid2eid of layer il: GGUF I32 [k, V] equals the I64 [V, k] source. */
static int check_tid2eid(const gguf_file *g, const st_set *s, int il) {
    char gn[64], sn[64];
    snprintf(gn, sizeof(gn), "blk.%d.ffn_gate_tid2eid.weight", il);
    snprintf(sn, sizeof(sn), "layers.%d.ffn.gate.tid2eid", il);
    const gguf_tensor *t = gguf_find_tensor(g, gn);
    const st_tensor *src = st_find(s, sn);
    T_CHECK(t && src && t->type == DS4_TYPE_I32, "%s", gn);
    T_CHECK(t->ne[0] == src->shape[1] && t->ne[1] == src->shape[0], "dims");
    int64_t *v = malloc(src->n_elements * sizeof(int64_t));
    ds4_error err = {{0}};
    T_CHECK(v && st_read_i64(s, src, 0, src->n_elements, v, &err) == 0, "%s", err.msg);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < src->n_elements; i++) {
        int32_t x;
        memcpy(&x, t->data + 4 * i, 4);
        bad += x != v[i];
    }
    free(v);
    T_CHECK(bad == 0, "%s: %" PRIu64 " ids differ", gn, bad);
    return 0;
}

static int test_tiny_a(void) {
    char dir[256], path[512], src[512], log[512];
    scratch(dir, sizeof(dir), "tiny-a");
    if (convert_namings(dir, "tiny-a", "f32")) return 1;
    snprintf(path, sizeof(path), "%s/official.gguf", dir);
    snprintf(src, sizeof(src), "%s/official", dir);
    gguf_file g;
    ds4_model m;
    st_set s;
    ds4_error err = {{0}};
    if (open_bound(&g, &m, path)) return 1;
    T_CHECK(st_open_dir(&s, src, &err) == 0, "%s", err.msg);
    int rc = check_tiny_a_meta(&m, &g);
    const struct {
        const char *g;
        uint64_t row;
        const char *s;
    } pairs[] = {
        {"token_embd.weight", 0, "embed.weight"},
        {"output.weight", 0, "head.weight"},
        {"output_hc_fn.weight", 0, "hc_head_fn"},
        {"output_hc_scale.weight", 0, "hc_head_scale"},
        {"blk.0.hc_attn_fn.weight", 0, "layers.0.hc_attn_fn"},
        {"blk.5.hc_ffn_base.weight", 0, "layers.5.hc_ffn_base"},
        {"blk.1.attn_kv_a_norm.weight", 0, "layers.1.attn.kv_norm.weight"},
        {"blk.2.attn_output_a.weight", 0, "layers.2.attn.wo_a.weight"},
        {"blk.2.attn_compressor_ape.weight", 0, "layers.2.attn.compressor.ape"},
        {"blk.3.attn_compressor_kv.weight", 0, "layers.3.attn.compressor.wkv.weight"},
        {"blk.4.indexer.proj.weight", 0, "layers.4.attn.indexer.weights_proj.weight"},
        {"blk.4.indexer_compressor_gate.weight", 0,
         "layers.4.attn.indexer.compressor.wgate.weight"},
        {"blk.3.exp_probs_b.bias", 0, "layers.3.ffn.gate.bias"},
        {"blk.0.ffn_down_shexp.weight", 0, "layers.0.ffn.shared_experts.w2.weight"},
        {"blk.3.ffn_gate_exps.weight", 5 * 256, "layers.3.ffn.experts.5.w1.weight"},
        {"blk.3.ffn_up_exps.weight", 7 * 256, "layers.3.ffn.experts.7.w3.weight"},
        {"blk.5.ffn_down_exps.weight", 2 * 256, "layers.5.ffn.experts.2.w2.weight"},
    };
    for (size_t i = 0; rc == 0 && i < sizeof(pairs) / sizeof(pairs[0]); i++)
        rc = cmp_tensor(&g, pairs[i].g, pairs[i].row, &s, pairs[i].s, CMP_EXACT, 0);
    for (int il = 0; rc == 0 && il < 3; il++) rc = check_tid2eid(&g, &s, il);
    gguf_close(&g);

    /* q8_0 from the saved naming: Q8_0 matrices and experts, F16 plain. */
    if (rc == 0) {
        snprintf(src, sizeof(src), "%s/saved", dir);
        snprintf(path, sizeof(path), "%s/q8.gguf", dir);
        snprintf(log, sizeof(log), "%s/q8.log", dir);
        T_CHECK(convert(src, path, "q8_0", log) == 0, "q8_0 conversion failed");
        if (open_bound(&g, &m, path)) return 1;
        const struct {
            const char *name;
            uint32_t type;
        } types[] = {
            {"token_embd.weight", DS4_TYPE_F16},      {"output.weight", DS4_TYPE_Q8_0},
            {"output_norm.weight", DS4_TYPE_F32},     {"output_hc_fn.weight", DS4_TYPE_F16},
            {"blk.0.hc_attn_fn.weight", DS4_TYPE_F16}, {"blk.0.attn_q_b.weight", DS4_TYPE_Q8_0},
            {"blk.0.attn_sinks.weight", DS4_TYPE_F32}, {"blk.0.ffn_gate_inp.weight", DS4_TYPE_F16},
            {"blk.0.ffn_gate_tid2eid.weight", DS4_TYPE_I32},
            {"blk.2.attn_compressor_ape.weight", DS4_TYPE_F16},
            {"blk.2.indexer.attn_q_b.weight", DS4_TYPE_F16},
            {"blk.4.ffn_up_shexp.weight", DS4_TYPE_Q8_0},
            {"blk.4.ffn_gate_exps.weight", DS4_TYPE_Q8_0},
            {"blk.4.ffn_down_exps.weight", DS4_TYPE_Q8_0},
        };
        for (size_t i = 0; rc == 0 && i < sizeof(types) / sizeof(types[0]); i++)
            rc = tc_expect_type(&g, types[i].name, types[i].type);
        if (rc == 0)
            rc = cmp_tensor(&g, "blk.4.ffn_gate_exps.weight", 3 * 256, &s,
                            "layers.4.ffn.experts.3.w1.weight", CMP_CLOSE, 0.01);
        if (rc == 0)
            rc = cmp_tensor(&g, "blk.1.attn_q_a.weight", 0, &s, "layers.1.attn.wq_a.weight",
                            CMP_CLOSE, 0.01);
        if (rc == 0)
            rc = cmp_tensor(&g, "token_embd.weight", 0, &s, "embed.weight", CMP_F16, 0);
        gguf_close(&g);
    }
    st_close(&s);
    if (rc == 0) tc_scratch_rm(dir);
    return rc;
}

static int test_tiny_b(void) {
    char dir[256], path[512], src[512];
    scratch(dir, sizeof(dir), "tiny-b");
    if (convert_namings(dir, "tiny-b", "f16")) return 1;
    snprintf(path, sizeof(path), "%s/hf.gguf", dir);
    snprintf(src, sizeof(src), "%s/official", dir);
    gguf_file g;
    ds4_model m;
    st_set s;
    ds4_error err = {{0}};
    if (open_bound(&g, &m, path)) return 1;
    T_CHECK(st_open_dir(&s, src, &err) == 0, "%s", err.msg);
    const ds4_hparams *hp = &m.hp;
    int rc = 0;
    if (!(hp->n_layer == 5 && hp->n_hash_layers == 2 && hp->n_expert == 16 &&
          hp->n_expert_used == 3 && hp->head_dim == 32 && hp->n_rot == 16 &&
          hp->rope_scale == 8.0f && hp->rope_orig_ctx == 32768 &&
          hp->expert_weights_scale == 2.0f && hp->compress_ratio[4] == 4)) {
        fprintf(stderr, "    tiny-b hyperparameters differ from make_model.py\n");
        rc = 1;
    }
    const struct {
        const char *g;
        uint64_t row;
        const char *s;
        int mode;
        uint32_t type;
    } pairs[] = {
        {"token_embd.weight", 0, "embed.weight", CMP_F16, DS4_TYPE_F16},
        {"output.weight", 0, "head.weight", CMP_F16, DS4_TYPE_F16},
        {"output_norm.weight", 0, "norm.weight", CMP_EXACT, DS4_TYPE_F32},
        {"blk.1.hc_ffn_scale.weight", 0, "layers.1.hc_ffn_scale", CMP_EXACT, DS4_TYPE_F32},
        {"blk.2.attn_q_b.weight", 0, "layers.2.attn.wq_b.weight", CMP_F16, DS4_TYPE_F16},
        {"blk.2.attn_sinks.weight", 0, "layers.2.attn.attn_sink", CMP_EXACT, DS4_TYPE_F32},
        {"blk.4.indexer_compressor_ape.weight", 0, "layers.4.attn.indexer.compressor.ape",
         CMP_F16, DS4_TYPE_F16},
        {"blk.4.indexer_compressor_norm.weight", 0,
         "layers.4.attn.indexer.compressor.norm.weight", CMP_EXACT, DS4_TYPE_F32},
        {"blk.3.ffn_gate_exps.weight", 15 * 256, "layers.3.ffn.experts.15.w1.weight", CMP_F16,
         DS4_TYPE_F16},
        {"blk.3.ffn_up_exps.weight", 9 * 256, "layers.3.ffn.experts.9.w3.weight", CMP_F16,
         DS4_TYPE_F16},
        {"blk.4.ffn_down_exps.weight", 0, "layers.4.ffn.experts.0.w2.weight", CMP_F16,
         DS4_TYPE_F16},
    };
    for (size_t i = 0; rc == 0 && i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        rc = tc_expect_type(&g, pairs[i].g, pairs[i].type);
        if (rc == 0)
            rc = cmp_tensor(&g, pairs[i].g, pairs[i].row, &s, pairs[i].s, pairs[i].mode, 0);
    }
    for (int il = 0; rc == 0 && il < 2; il++) rc = check_tid2eid(&g, &s, il);
    gguf_close(&g);
    st_close(&s);
    if (rc == 0) tc_scratch_rm(dir);
    return rc;
}

/* q2 and q4 on the 3-layer mini model (q2 is the slow one: once). */
static int test_mini_q2_q4(void) {
    char dir[256], in[512], path[512], log[512];
    scratch(dir, sizeof(dir), "mini");
    snprintf(in, sizeof(in), "%s/hf", dir);
    T_CHECK(make_model(in, "mini", "hf") == 0, "make_model.py mini");
    st_set s;
    ds4_error err = {{0}};
    T_CHECK(st_open_dir(&s, in, &err) == 0, "%s", err.msg);
    int rc = 0;
    static const char *const kinds[2] = {"q2", "q4"};
    for (int k = 0; rc == 0 && k < 2; k++) {
        snprintf(path, sizeof(path), "%s/%s.gguf", dir, kinds[k]);
        snprintf(log, sizeof(log), "%s/%s.log", dir, kinds[k]);
        T_CHECK(convert(in, path, kinds[k], log) == 0, "%s conversion failed", kinds[k]);
        gguf_file g;
        ds4_model m;
        if (open_bound(&g, &m, path)) return 1;
        uint32_t gu = k == 0 ? DS4_TYPE_IQ2_XXS : DS4_TYPE_Q4_K;
        uint32_t dn = k == 0 ? DS4_TYPE_Q2_K : DS4_TYPE_Q4_K;
        const struct {
            const char *name;
            uint32_t type;
        } types[] = {
            {"blk.0.ffn_gate_exps.weight", gu},       {"blk.1.ffn_up_exps.weight", gu},
            {"blk.2.ffn_down_exps.weight", dn},       {"blk.1.attn_q_a.weight", DS4_TYPE_Q8_0},
            {"blk.1.attn_q_b.weight", DS4_TYPE_Q8_0}, {"blk.1.attn_kv.weight", DS4_TYPE_Q8_0},
            {"blk.1.attn_output_a.weight", DS4_TYPE_Q8_0},
            {"blk.1.attn_output_b.weight", DS4_TYPE_Q8_0},
            {"blk.2.ffn_gate_shexp.weight", DS4_TYPE_Q8_0}, {"output.weight", DS4_TYPE_Q8_0},
            {"blk.0.hc_ffn_fn.weight", DS4_TYPE_F16}, {"blk.2.ffn_gate_inp.weight", DS4_TYPE_F16},
            {"blk.2.attn_compressor_gate.weight", DS4_TYPE_F16},
            {"blk.1.indexer.proj.weight", DS4_TYPE_F16}, {"token_embd.weight", DS4_TYPE_F16},
            {"blk.1.attn_q_a_norm.weight", DS4_TYPE_F32},
            {"blk.2.hc_attn_base.weight", DS4_TYPE_F32},
            {"blk.2.hc_attn_scale.weight", DS4_TYPE_F32}, {"blk.2.exp_probs_b.bias", DS4_TYPE_F32},
            {"blk.0.ffn_gate_tid2eid.weight", DS4_TYPE_I32},
        };
        for (size_t i = 0; rc == 0 && i < sizeof(types) / sizeof(types[0]); i++)
            rc = tc_expect_type(&g, types[i].name, types[i].type);
        /* Fused gate_up_proj [E, 2I, H]: expert 1's up rows are its second half. */
        const st_tensor *fused = st_find(&s, "model.layers.1.mlp.experts.gate_up_proj");
        float *ref = fused ? malloc(256 * 256 * sizeof(float)) : NULL;
        float *got = ref ? deq_rows(gguf_find_tensor(&g, "blk.1.ffn_up_exps.weight"), 256, 256)
                         : NULL;
        if (rc == 0 && (!got || st_read_f32(&s, fused, (2 * 256 + 256) * 256, 256 * 256, ref,
                                            &err) != 0)) {
            fprintf(stderr, "    fused expert read failed: %s\n", err.msg);
            rc = 1;
        }
        double se = 0, sr = 0;
        for (int i = 0; rc == 0 && i < 256 * 256; i++) {
            se += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
            sr += (double)ref[i] * ref[i];
        }
        double lim = k == 0 ? 0.6 : 0.15;
        if (rc == 0 && !(sqrt(se / sr) < lim)) {
            fprintf(stderr, "    %s up expert 1: relative RMS error %g >= %g\n", kinds[k],
                    sqrt(se / sr), lim);
            rc = 1;
        }
        free(ref);
        free(got);
        gguf_close(&g);
    }
    st_close(&s);
    if (rc == 0) tc_scratch_rm(dir);
    return rc;
}

/* ---------------------------------------------------------------------- */
/* Converter: bad inputs                                                   */
/* ---------------------------------------------------------------------- */

/* Rewrite model.safetensors of dir through fn(header) (data kept as is:
 * offsets are relative to the data section). */
static bool mutate_st(const char *dir, void (*fn)(cJSON *hdr)) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    size_t len;
    uint8_t *f = (uint8_t *)tc_slurp(path, &len);
    if (!f || len < 8) {
        free(f);
        return false;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f[i];
    cJSON *h = cJSON_ParseWithLength((const char *)f + 8, (size_t)n);
    bool ok = h != NULL;
    if (ok) {
        fn(h);
        char *text = cJSON_PrintUnformatted(h);
        size_t tl = text ? strlen(text) : 0;
        uint8_t *out = text ? malloc(8 + tl + (len - 8 - n)) : NULL;
        ok = out != NULL;
        if (ok) {
            for (int i = 0; i < 8; i++) out[i] = (uint8_t)((uint64_t)tl >> (8 * i));
            memcpy(out + 8, text, tl);
            memcpy(out + 8 + tl, f + 8 + n, len - 8 - n);
            ok = tc_spit(path, out, 8 + tl + (len - 8 - n));
        }
        free(out);
        free(text);
        cJSON_Delete(h);
    }
    free(f);
    return ok;
}

static void drop_wq_a(cJSON *h) {
    cJSON_DeleteItemFromObjectCaseSensitive(h, "model.layers.1.attn.wq_a.weight");
}

static void reshape_wq_b(cJSON *h) {
    cJSON *e = cJSON_GetObjectItemCaseSensitive(h, "model.layers.1.attn.wq_b.weight");
    const int shape[2] = {64, 64}; /* (128, 32) in the mini model: same count */
    if (e) cJSON_ReplaceItemInObjectCaseSensitive(e, "shape", cJSON_CreateIntArray(shape, 2));
}

static void add_fp8_scale(cJSON *h) {
    cJSON *e = cJSON_Parse("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
    if (e) cJSON_AddItemToObject(h, "model.layers.0.attn.wq_a.scale", e);
}

static void add_extra_expert(cJSON *h) {
    cJSON *e = cJSON_Parse("{\"dtype\":\"F32\",\"shape\":[0,256],\"data_offsets\":[0,0]}");
    if (e) cJSON_AddItemToObject(h, "model.layers.2.ffn.experts.9.w1.weight", e);
}

typedef struct bad_case {
    const char *name;
    const char *cfg_from, *cfg_to;  /* config.json edit, or NULL */
    void (*mutate)(cJSON *hdr);     /* safetensors header edit, or NULL */
    const char *type;
    const char *want;               /* in the error line */
} bad_case;

/* Copy the good folder, apply the case's edit, convert: exit 1, the message,
 * no output and no .tmp file. */
static int run_bad(const char *dir, const char *good, const bad_case *c) {
    char in[512], out[600], tmp[700], log[600];
    snprintf(in, sizeof(in), "%s/%s", dir, c->name);
    snprintf(out, sizeof(out), "%s/%s.gguf", dir, c->name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", out);
    snprintf(log, sizeof(log), "%s/%s.log", dir, c->name);
    T_CHECK(tc_sh("cp -r '%s' '%s'", good, in) == 0, "copy %s", good);
    char cfg[600];
    snprintf(cfg, sizeof(cfg), "%s/config.json", in);
    if (c->cfg_from) T_CHECK(file_replace(cfg, c->cfg_from, c->cfg_to), "%s: edit", c->name);
    if (c->mutate) T_CHECK(mutate_st(in, c->mutate), "%s: header edit", c->name);
    int rc = convert(in, out, c->type, log);
    T_CHECK(rc == 1, "%s: exit %d, expected 1", c->name, rc);
    T_CHECK(tc_file_has(log, c->want), "%s: message", c->name);
    T_CHECK(tc_file_has(log, "ds4cl-convert: "), "%s: message prefix", c->name);
    T_CHECK(!tc_exists(out) && !tc_exists(tmp), "%s: output left behind", c->name);
    return 0;
}

static int test_bad_inputs(void) {
    char dir[256], good[512], ff[512], log[512], out[512];
    scratch(dir, sizeof(dir), "bad");
    snprintf(good, sizeof(good), "%s/good", dir);
    snprintf(ff, sizeof(ff), "%s/ff128", dir);
    T_CHECK(make_model(good, "mini", "saved") == 0, "make_model.py mini");
    T_CHECK(make_model(ff, "mini-ff128", "saved") == 0, "make_model.py mini-ff128");
    const bad_case cases[] = {
        {"missing-tensor", NULL, NULL, drop_wq_a, "q8_0",
         "missing tensor 'layers.1.attn.wq_a.weight'"},
        {"wrong-shape", NULL, NULL, reshape_wq_b, "q8_0",
         "'model.layers.1.attn.wq_b.weight': shape (64, 64), expected (128, 32)"},
        {"fp8", NULL, NULL, add_fp8_scale, "q8_0", "'model.layers.0.attn.wq_a.weight': dtype "
         "F32 has a scale tensor 'model.layers.0.attn.wq_a.scale'"},
        {"extra-expert", NULL, NULL, add_extra_expert, "q8_0",
         "'model.layers.2.ffn.experts.9.w1.weight' is not part of the deepseek4 layout"},
        {"bad-hidden", "\"hidden_size\": 256", "\"hidden_size\": \"abc\"", NULL, "q8_0",
         "key 'hidden_size': \"abc\", expected an integer"},
        {"zero-layers", "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 0", NULL, "q8_0",
         "key 'num_hidden_layers'"},
        {"hidden-mismatch", "\"hidden_size\": 256", "\"hidden_size\": 512", NULL, "f32",
         "expected (64, 512) from config.json"},
        {"bad-layer-type", "\"heavily_compressed_attention\"\n", "\"full_attention\"\n", NULL,
         "q8_0", "key 'layer_types': layer 2 is \"full_attention\""},
        {"contradiction", "\"num_experts_per_tok\": 1,",
         "\"num_experts_per_tok\": 1, \"num_hash_layers\": 2,", NULL, "q8_0",
         "'mlp_layer_types' (1 hash layers) and 'num_hash_layers' (2) contradict"},
        {"bad-rope", "\"rope_type\": \"yarn\"", "\"rope_type\": \"llama3\"", NULL, "q8_0",
         "contradict"},
        {"model-type", "\"model_type\": \"deepseek_v4\"", "\"model_type\": \"deepseek_v3\"", NULL,
         "q8_0", "key 'model_type'"},
    };
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof(cases) / sizeof(cases[0]); i++)
        rc = run_bad(dir, good, &cases[i]);
    /* Rows that do not fit the block size: down rows of 128 for Q4_K. */
    const bad_case ffc = {"ff128-q4", NULL, NULL, NULL, "q4",
                          "'blk.0.ffn_down_exps.weight': rows of 128 values are not a multiple "
                          "of the Q4_K block size 256; pick another --type"};
    if (rc == 0) rc = run_bad(dir, ff, &ffc);
    if (rc) return rc;

    /* Truncated safetensors header. */
    char in[600];
    snprintf(in, sizeof(in), "%s/truncated", dir);
    T_CHECK(tc_sh("cp -r '%s' '%s' && truncate -s 200 '%s/model.safetensors'", good, in, in) == 0,
            "truncate");
    snprintf(out, sizeof(out), "%s/truncated.gguf", dir);
    snprintf(log, sizeof(log), "%s/truncated.log", dir);
    T_CHECK(convert(in, out, "q8_0", log) == 1, "truncated: exit code");
    T_CHECK(tc_file_has(log, "model.safetensors: header length"), "truncated: message");
    T_CHECK(!tc_exists(out), "truncated: output written");
    /* Missing folder, missing config.json, bad command line. */
    snprintf(in, sizeof(in), "%s/nothing-here", dir);
    T_CHECK(convert(in, out, "q8_0", log) == 1 && tc_file_has(log, "nothing-here/config.json"),
            "missing folder");
    T_CHECK(tc_sh("rm '%s/config.json'", good) == 0, "rm");
    T_CHECK(convert(good, out, "q8_0", log) == 1 && tc_file_has(log, "config.json: cannot open"),
            "missing config");
    T_CHECK(convert(good, out, "q3", log) == 2 && tc_file_has(log, "unknown --type 'q3'"), "type");
    T_CHECK(tc_sh("'%s/ds4cl-convert' 2>/dev/null", test_bin_dir()) == 2, "no arguments");
    T_CHECK(!tc_exists(out), "output written");
    tc_scratch_rm(dir);
    return 0;
}

/* A tokenizer.json next to the weights becomes the GGUF vocabulary. */
static int test_tokenizer(void) {
    char dir[256], in[512], path[600], log[600];
    scratch(dir, sizeof(dir), "tok");
    snprintf(in, sizeof(in), "%s/official", dir);
    T_CHECK(make_model(in, "mini", "official") == 0, "make_model.py mini");
    /* 64 ids: 0..3 special/added, 4..9 BPE vocab, the rest padding. */
    const char *tj =
        "{\"added_tokens\":[{\"id\":0,\"content\":\"<bos>\",\"special\":true},"
        "{\"id\":1,\"content\":\"<eos>\",\"special\":true},"
        "{\"id\":2,\"content\":\"<think>\",\"special\":false}],"
        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"<bos>\":0,\"<eos>\":1,\"a\":4,\"b\":5,"
        "\"ab\":6,\"\\u0120a\":7},\"merges\":[\"a b\",[\"\\u0120\",\"a\"]]}}";
    snprintf(path, sizeof(path), "%s/tokenizer.json", in);
    T_CHECK(tc_spit(path, tj, strlen(tj)), "write tokenizer.json");
    snprintf(path, sizeof(path), "%s/tok.gguf", dir);
    snprintf(log, sizeof(log), "%s/tok.log", dir);
    T_CHECK(convert(in, path, "f32", log) == 0, "conversion failed");
    gguf_file g;
    ds4_model m;
    if (open_bound(&g, &m, path)) return 1;
    const gguf_kv *tok = gguf_find_kv(&g, "tokenizer.ggml.tokens");
    const gguf_kv *typ = gguf_find_kv(&g, "tokenizer.ggml.token_type");
    const gguf_kv *mer = gguf_find_kv(&g, "tokenizer.ggml.merges");
    int rc = 0;
    if (!tok || tok->value.arr.count != 64 || !typ || !mer || mer->value.arr.count != 2) {
        fprintf(stderr, "    tokenizer keys missing or of the wrong length\n");
        rc = 1;
    }
    const struct {
        uint64_t id;
        const char *text;
        int32_t type;
    } want[] = {{0, "<bos>", 3}, {2, "<think>", 4}, {6, "ab", 1},
                {7, "\xc4\xa0" "a", 1}, {3, "[PAD3]", 5}, {63, "[PAD63]", 5}};
    for (size_t i = 0; rc == 0 && i < sizeof(want) / sizeof(want[0]); i++) {
        gguf_value v, t;
        char buf[64];
        if (gguf_array_get(&tok->value, want[i].id, &v) ||
            gguf_array_get(&typ->value, want[i].id, &t) ||
            strcmp(gguf_str_copy(v.s, buf, sizeof(buf)), want[i].text) != 0 ||
            t.i != want[i].type) {
            fprintf(stderr, "    token %" PRIu64 " wrong\n", want[i].id);
            rc = 1;
        }
    }
    gguf_value v;
    char buf[64];
    if (rc == 0 && (gguf_array_get(&mer->value, 1, &v) ||
                    strcmp(gguf_str_copy(v.s, buf, sizeof(buf)), "\xc4\xa0 a") != 0)) {
        fprintf(stderr, "    merge 1 is '%s'\n", buf);
        rc = 1;
    }
    gguf_close(&g);
    /* An id beyond vocab_size is an error. */
    if (rc == 0) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", in);
        T_CHECK(file_replace(path, "\"ab\":6", "\"ab\":64"), "edit");
        snprintf(path, sizeof(path), "%s/tok2.gguf", dir);
        T_CHECK(convert(in, path, "f32", log) == 1 &&
                tc_file_has(log, "token 'ab' has id 64 outside the vocab_size 64"), "bad id");
    }
    if (rc == 0) tc_scratch_rm(dir);
    return rc;
}

/* Official config without YaRN (rope type "default"): factor 1, the
 * original context from rope_scaling; the summary names counts and bytes;
 * general.name defaults to the folder's name. */
static int test_plain_rope(void) {
    char dir[256], in[512], path[600], log[600], sum[600];
    scratch(dir, sizeof(dir), "plain");
    snprintf(in, sizeof(in), "%s/mini-folder", dir);
    T_CHECK(make_model(in, "mini", "official") == 0, "make_model.py mini");
    snprintf(path, sizeof(path), "%s/config.json", in);
    T_CHECK(file_replace(path, "\"type\": \"yarn\"", "\"type\": \"default\"") &&
            file_replace(path, "\"original_max_position_embeddings\": 65536",
                         "\"original_max_position_embeddings\": 4096"), "edit");
    snprintf(path, sizeof(path), "%s/plain.gguf", dir);
    snprintf(log, sizeof(log), "%s/plain.log", dir);
    snprintf(sum, sizeof(sum), "%s/summary.txt", dir);
    T_CHECK(tc_sh("'%s/ds4cl-convert' '%s' '%s' --type f16 >'%s' 2>'%s'", test_bin_dir(), in, path,
                  sum, log) == 0, "conversion failed");
    T_CHECK(tc_file_has(sum, "tensors: 92") && tc_file_has(sum, "F16 ") &&
            tc_file_has(sum, "I32 ") && tc_file_has(sum, "total: "), "summary");
    gguf_file g;
    ds4_model m;
    if (open_bound(&g, &m, path)) return 1;
    int rc = 0;
    if (!(m.hp.rope_scale == 1.0f && m.hp.rope_orig_ctx == 4096 &&
          m.hp.rope_compress_base == 160000.0f && m.hp.n_hash_layers == 1 &&
          m.hp.compress_ratio[1] == 4 && m.hp.compress_ratio[2] == 128 &&
          strcmp(m.name, "mini-folder") == 0)) {
        fprintf(stderr, "    plain rope: factor %g, orig ctx %" PRIu64 ", name '%s'\n",
                (double)m.hp.rope_scale, m.hp.rope_orig_ctx, m.name);
        rc = 1;
    }
    gguf_close(&g);
    if (rc == 0) tc_scratch_rm(dir);
    return rc;
}

void tests_register_convert(void) {
    test_add("convert_safetensors_reader", test_reader_good);
    test_add("convert_safetensors_reader_rejects", test_reader_bad);
    test_add("convert_tiny_a_namings_f32_q8_0", test_tiny_a);
    test_add("convert_tiny_b_namings_f16", test_tiny_b);
    test_add("convert_mini_q2_q4", test_mini_q2_q4);
    test_add("convert_bad_inputs", test_bad_inputs);
    test_add("convert_tokenizer", test_tokenizer);
    test_add("convert_plain_rope_summary", test_plain_rope);
}
