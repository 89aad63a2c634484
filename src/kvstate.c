/* kvstate.c - a session's device state: the KV caches, the compressor
 * frontiers and the scratch activations; and its snapshot format.
 *
 * Memory per layer (f32): raw ring (n_swa + chunk) x head_dim; compressed
 * layers add (n_ctx/r + 1) x head_dim rows and a frontier of
 * 2 x state_rows x coff*head_dim; ratio-4 layers add the indexer's
 * (n_ctx/4 + 1) x idx_head_dim rows and its 2 x 8 x 2*idx_head_dim frontier.
 * Everything is allocated once, at session creation.
 *
 * Snapshot (little-endian, version 1):
 *   "DS4CLSN1", u32 version, u32 n_layer, n_embd, n_vocab, head_dim,
 *   idx_head_dim, n_swa, pos, has_logits, [f32 logits[n_vocab]],
 *   per layer: u32 n_raw, raw rows of positions pos-n_raw .. pos-1;
 *     ratio != 0: u32 n_comp, comp rows, frontier kv, frontier score;
 *     ratio == 4: indexer rows (n_comp), indexer frontier kv, score;
 *   u64 XXH64 of everything before it.
 * Restore checks every field against the engine's model and the session's
 * capacity before writing anything to the device.
 */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "forward.h"

#define SNAP_MAGIC "DS4CLSN1"
#define SNAP_VERSION 1u

static int new_buf(ds4_session *s, cl_mem *m, uint64_t bytes, ds4_error *err) {
    if (ds4_buffer_new(&s->e->rt, bytes, m, err) != 0) return -1;
    s->device_bytes += bytes;
    return 0;
}

static uint32_t comp_width(uint32_t ratio, uint32_t dim) { return ratio == 4 ? 2 * dim : dim; }

int ds4_kv_alloc(ds4_session *s, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    const uint64_t T = s->chunk, F = 4;
    const uint32_t D = hp->head_dim, ID = hp->idx_head_dim;
    s->cap = hp->n_swa + s->chunk;
    uint32_t max_idx_rows = 1, max_ff = 1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer_kv *kv = &s->layers[il];
        const ds4_layer *L = &s->e->model.layers[il];
        if (new_buf(s, &kv->ring, (uint64_t)s->cap * D * F, err) != 0) return -1;
        if (L->ratio) {
            kv->comp_cap = s->n_ctx / L->ratio + 1;
            kv->state_rows = L->ratio == 4 ? 8 : L->ratio;
            uint64_t w = comp_width(L->ratio, D);
            if (new_buf(s, &kv->comp, (uint64_t)kv->comp_cap * D * F, err) != 0 ||
                new_buf(s, &kv->comp_kv, kv->state_rows * w * F, err) != 0 ||
                new_buf(s, &kv->comp_sc, kv->state_rows * w * F, err) != 0)
                return -1;
        }
        if (L->ratio == 4) {
            uint64_t w = 2ull * ID;
            if (new_buf(s, &kv->idx, (uint64_t)kv->comp_cap * ID * F, err) != 0 ||
                new_buf(s, &kv->idx_kv, 8 * w * F, err) != 0 || new_buf(s, &kv->idx_sc, 8 * w * F, err) != 0)
                return -1;
            if (kv->comp_cap > max_idx_rows) max_idx_rows = kv->comp_cap;
        }
        uint32_t ff = (uint32_t)L->ffn_gate_exps->ne[1];
        if ((uint32_t)L->ffn_gate_shexp->ne[1] > ff) ff = (uint32_t)L->ffn_gate_shexp->ne[1];
        if (ff > max_ff) max_ff = ff;
    }
    const uint64_t E = hp->n_embd, HC = hp->n_hc, K = hp->n_expert_used;
    const uint64_t cw = 2ull * (D > ID ? D : ID);
    ds4_scratch *sc = &s->s;
    struct {
        cl_mem *m;
        uint64_t floats;
    } plan[] = {
        {&sc->tok, T},
        {&sc->X, T * HC * E},
        {&sc->flat, T * HC * E},
        {&sc->mix, T * (2 + HC) * HC},
        {&sc->post, T * HC},
        {&sc->comb, T * HC * HC},
        {&sc->x, T * E},
        {&sc->xn, T * E},
        {&sc->qr, T * hp->q_lora},
        {&sc->qn, T * hp->q_lora},
        {&sc->q, T * hp->n_head * D},
        {&sc->kv, T * D},
        {&sc->ckv, T * cw},
        {&sc->csc, T * cw},
        {&sc->iq, T * hp->n_idx_head * ID},
        {&sc->iw, T * hp->n_idx_head},
        {&sc->scores, T * max_idx_rows},
        {&sc->isel, T * hp->idx_top_k},
        {&sc->ao, T * hp->n_head * D},
        {&sc->low, T * hp->o_groups * hp->o_lora},
        {&sc->y, T * E},
        {&sc->rl, T * hp->n_expert},
        {&sc->esel, T * K},
        {&sc->ew, T * K},
        {&sc->g, T * K * max_ff},
        {&sc->yd, T * K * E},
        {&sc->sg, T * max_ff},
        {&sc->su, T * max_ff},
        {&sc->ys, T * E},
        {&sc->hmix, T * HC},
        {&sc->logits, T * hp->n_vocab},
    };
    for (size_t i = 0; i < sizeof(plan) / sizeof(plan[0]); i++)
        if (new_buf(s, plan[i].m, plan[i].floats * 4, err) != 0) return -1;
    /* Expert-grouped plans (ops_moe.c) and the output-group ids. */
    const uint32_t G = hp->o_groups, tile = (uint32_t)s->e->kern.mm_tokens;
    if (new_buf(s, &sc->plan, ds4_moe_plan_ints((uint32_t)(T * K), hp->n_expert, tile) * 4, err) != 0 ||
        new_buf(s, &sc->gplan, ds4_moe_plan_ints((uint32_t)T * G, G, tile) * 4, err) != 0 ||
        new_buf(s, &sc->gidx, T * G * 4, err) != 0)
        return -1;
    if (s->e->tiled_ready &&
        (new_buf(s, &sc->tplan, ds4_tiled_plan_ints(&s->e->tiled, (uint32_t)(T * K), hp->n_expert) * 4, err) != 0 ||
         new_buf(s, &sc->tgplan, ds4_tiled_plan_ints(&s->e->tiled, (uint32_t)T * G, G) * 4, err) != 0))
        return -1;
    int32_t *gidx = malloc(T * G * sizeof(int32_t));
    if (!gidx) return ds4_fail(err, "out of memory");
    for (uint64_t i = 0; i < T * G; i++) gidx[i] = (int32_t)(i % G);
    int rc = ds4_buffer_write(&s->e->rt, sc->gidx, 0, gidx, T * G * sizeof(int32_t), err);
    free(gidx);
    if (rc != 0) return -1;
    s->logits = calloc(hp->n_vocab, sizeof(float));
    if (!s->logits) return ds4_fail(err, "out of memory");
    return 0;
}

void ds4_kv_release(ds4_session *s) {
    for (uint32_t il = 0; il < DS4_MAX_LAYERS; il++) {
        ds4_layer_kv *kv = &s->layers[il];
        cl_mem *ms[] = {&kv->ring, &kv->comp, &kv->comp_kv, &kv->comp_sc, &kv->idx, &kv->idx_kv, &kv->idx_sc};
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
            if (*ms[i]) {
                clReleaseMemObject(*ms[i]);
                *ms[i] = NULL;
            }
    }
    cl_mem *scratch = (cl_mem *)&s->s;
    for (size_t i = 0; i < sizeof(s->s) / sizeof(cl_mem); i++)
        if (scratch[i]) {
            clReleaseMemObject(scratch[i]);
            scratch[i] = NULL;
        }
    free(s->logits);
    s->logits = NULL;
}

static int fill(ds4_session *s, cl_mem m, float v, uint64_t floats, ds4_error *err) {
    DS4_CL_CHECK(clEnqueueFillBuffer(s->e->rt.queue, m, &v, sizeof(v), 0, (size_t)floats * 4, 0, NULL, NULL), err);
    return 0;
}

int ds4_kv_reset(ds4_session *s, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer_kv *kv = &s->layers[il];
        uint32_t ratio = s->e->model.layers[il].ratio;
        if (ratio) {
            uint64_t n = (uint64_t)kv->state_rows * comp_width(ratio, hp->head_dim);
            if (fill(s, kv->comp_kv, 0.0f, n, err) || fill(s, kv->comp_sc, -1e30f, n, err)) return -1;
        }
        if (ratio == 4) {
            uint64_t n = 8ull * 2 * hp->idx_head_dim;
            if (fill(s, kv->idx_kv, 0.0f, n, err) || fill(s, kv->idx_sc, -1e30f, n, err)) return -1;
        }
    }
    s->pos = 0;
    s->has_logits = false;
    return ds4_runtime_finish(&s->e->rt, err);
}

/* ------------------------------------------------------------------------ */
/* Snapshot                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *buf;
    uint64_t len, cap;
    int failed;
} wbuf;

static void put(wbuf *w, const void *p, uint64_t n) {
    if (w->failed) return;
    if (w->len + n > w->cap) {
        uint64_t nc = w->cap ? w->cap : 1 << 20;
        while (nc < w->len + n) nc *= 2;
        uint8_t *nb = realloc(w->buf, nc);
        if (!nb) {
            w->failed = 1;
            return;
        }
        w->buf = nb;
        w->cap = nc;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void put_u32(wbuf *w, uint32_t v) { put(w, &v, 4); }

/* Append `bytes` read from device buffer m at byte offset off. */
static int put_dev(ds4_session *s, wbuf *w, cl_mem m, uint64_t off, uint64_t bytes, ds4_error *err) {
    if (bytes == 0) return 0;
    uint8_t *tmp = malloc(bytes);
    if (!tmp) return ds4_fail(err, "out of memory saving the session");
    int rc = ds4_buffer_read(&s->e->rt, m, off, tmp, bytes, err);
    if (rc == 0) put(w, tmp, bytes);
    free(tmp);
    return rc;
}

int ds4_session_save(ds4_session *s, uint8_t **out, uint64_t *size, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    const uint32_t D = hp->head_dim, ID = hp->idx_head_dim;
    wbuf w = {0};
    put(&w, SNAP_MAGIC, 8);
    uint32_t hdr[] = {SNAP_VERSION, hp->n_layer, hp->n_embd, hp->n_vocab, D, ID, hp->n_swa, s->pos, s->has_logits};
    put(&w, hdr, sizeof(hdr));
    if (s->has_logits) put(&w, s->logits, (uint64_t)hp->n_vocab * 4);
    int rc = ds4_runtime_finish(&s->e->rt, err);
    for (uint32_t il = 0; rc == 0 && il < hp->n_layer; il++) {
        const ds4_layer_kv *kv = &s->layers[il];
        uint32_t ratio = s->e->model.layers[il].ratio;
        uint32_t n_raw = s->pos < hp->n_swa ? s->pos : hp->n_swa;
        put_u32(&w, n_raw);
        for (uint32_t p = s->pos - n_raw; rc == 0 && p < s->pos; p++)
            rc = put_dev(s, &w, kv->ring, (uint64_t)(p % s->cap) * D * 4, (uint64_t)D * 4, err);
        if (rc || !ratio) continue;
        uint32_t n_comp = s->pos / ratio;
        uint64_t state = (uint64_t)kv->state_rows * comp_width(ratio, D) * 4;
        put_u32(&w, n_comp);
        rc = put_dev(s, &w, kv->comp, 0, (uint64_t)n_comp * D * 4, err);
        if (rc == 0) rc = put_dev(s, &w, kv->comp_kv, 0, state, err);
        if (rc == 0) rc = put_dev(s, &w, kv->comp_sc, 0, state, err);
        if (rc || ratio != 4) continue;
        uint64_t istate = 8ull * 2 * ID * 4;
        rc = put_dev(s, &w, kv->idx, 0, (uint64_t)n_comp * ID * 4, err);
        if (rc == 0) rc = put_dev(s, &w, kv->idx_kv, 0, istate, err);
        if (rc == 0) rc = put_dev(s, &w, kv->idx_sc, 0, istate, err);
    }
    if (rc == 0 && !w.failed) {
        uint64_t h = XXH64(w.buf, w.len, 0);
        put(&w, &h, 8);
    }
    if (rc != 0 || w.failed) {
        free(w.buf);
        return rc != 0 ? -1 : ds4_fail(err, "out of memory saving the session");
    }
    *out = w.buf;
    *size = w.len;
    return 0;
}

typedef struct {
    const uint8_t *p;
    uint64_t left;
} rbuf;

static int take(rbuf *r, void *dst, uint64_t n) {
    if (n > r->left) return -1;
    if (dst) memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return 0;
}

/* Validate the blob fully (walk it) before touching the device. */
static int snapshot_check(ds4_session *s, const uint8_t *buf, uint64_t size, uint32_t *pos, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    if (size < 8 + 9 * 4 + 8) return ds4_fail(err, "snapshot: %llu bytes is too short", (unsigned long long)size);
    if (memcmp(buf, SNAP_MAGIC, 8) != 0) return ds4_fail(err, "snapshot: not a ds4cl session snapshot");
    uint64_t h;
    memcpy(&h, buf + size - 8, 8);
    if (XXH64(buf, size - 8, 0) != h) return ds4_fail(err, "snapshot: checksum mismatch (corrupt or truncated)");
    rbuf r = {buf + 8, size - 16};
    uint32_t hdr[9];
    take(&r, hdr, sizeof(hdr));
    if (hdr[0] != SNAP_VERSION) return ds4_fail(err, "snapshot: version %u, expected %u", hdr[0], SNAP_VERSION);
    uint32_t want[] = {hp->n_layer, hp->n_embd, hp->n_vocab, hp->head_dim, hp->idx_head_dim, hp->n_swa};
    for (int i = 0; i < 6; i++)
        if (hdr[1 + i] != want[i]) return ds4_fail(err, "snapshot: made for a different model (field %d)", i + 1);
    *pos = hdr[7];
    if (*pos > s->n_ctx)
        return ds4_fail(err, "snapshot: %u tokens do not fit a session of %u", *pos, s->n_ctx);
    if (hdr[8] > 1 || (hdr[8] && take(&r, NULL, (uint64_t)hp->n_vocab * 4)))
        return ds4_fail(err, "snapshot: bad logits section");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t ratio = s->e->model.layers[il].ratio, n;
        uint32_t n_raw = *pos < hp->n_swa ? *pos : hp->n_swa;
        if (take(&r, &n, 4) || n != n_raw || take(&r, NULL, (uint64_t)n * hp->head_dim * 4))
            return ds4_fail(err, "snapshot: layer %u raw rows malformed", il);
        if (!ratio) continue;
        uint64_t state = (uint64_t)s->layers[il].state_rows * comp_width(ratio, hp->head_dim) * 4;
        if (take(&r, &n, 4) || n != *pos / ratio || take(&r, NULL, (uint64_t)n * hp->head_dim * 4 + 2 * state))
            return ds4_fail(err, "snapshot: layer %u compressed rows malformed", il);
        if (ratio == 4 && take(&r, NULL, (uint64_t)n * hp->idx_head_dim * 4 + 2 * 8ull * 2 * hp->idx_head_dim * 4))
            return ds4_fail(err, "snapshot: layer %u indexer rows malformed", il);
    }
    if (r.left != 0) return ds4_fail(err, "snapshot: %llu trailing bytes", (unsigned long long)r.left);
    return 0;
}

int ds4_session_restore(ds4_session *s, const uint8_t *buf, uint64_t size, ds4_error *err) {
    const ds4_hparams *hp = &s->e->model.hp;
    const uint32_t D = hp->head_dim, ID = hp->idx_head_dim;
    uint32_t pos = 0;
    if (snapshot_check(s, buf, size, &pos, err) != 0) return -1;
    if (ds4_kv_reset(s, err) != 0) return -1;
    rbuf r = {buf + 8 + 9 * 4, size - 8 - 9 * 4 - 8};
    uint32_t has_logits;
    memcpy(&has_logits, buf + 8 + 8 * 4, 4);
    if (has_logits) take(&r, s->logits, (uint64_t)hp->n_vocab * 4);
    ds4_runtime *rt = &s->e->rt;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        ds4_layer_kv *kv = &s->layers[il];
        uint32_t ratio = s->e->model.layers[il].ratio, n = 0;
        take(&r, &n, 4); /* sizes were validated by snapshot_check */
        for (uint32_t p = pos - n; p < pos; p++) {
            if (ds4_buffer_write(rt, kv->ring, (uint64_t)(p % s->cap) * D * 4, r.p, (uint64_t)D * 4, err)) return -1;
            take(&r, NULL, (uint64_t)D * 4);
        }
        if (!ratio) continue;
        uint64_t state = (uint64_t)kv->state_rows * comp_width(ratio, D) * 4;
        take(&r, &n, 4);
        if ((n && ds4_buffer_write(rt, kv->comp, 0, r.p, (uint64_t)n * D * 4, err)) ||
            ds4_buffer_write(rt, kv->comp_kv, 0, r.p + (uint64_t)n * D * 4, state, err) ||
            ds4_buffer_write(rt, kv->comp_sc, 0, r.p + (uint64_t)n * D * 4 + state, state, err))
            return -1;
        take(&r, NULL, (uint64_t)n * D * 4 + 2 * state);
        if (ratio != 4) continue;
        uint64_t istate = 8ull * 2 * ID * 4;
        if ((n && ds4_buffer_write(rt, kv->idx, 0, r.p, (uint64_t)n * ID * 4, err)) ||
            ds4_buffer_write(rt, kv->idx_kv, 0, r.p + (uint64_t)n * ID * 4, istate, err) ||
            ds4_buffer_write(rt, kv->idx_sc, 0, r.p + (uint64_t)n * ID * 4 + istate, istate, err))
            return -1;
        take(&r, NULL, (uint64_t)n * ID * 4 + 2 * istate);
    }
    s->pos = pos;
    s->has_logits = has_logits != 0;
    return 0;
}
