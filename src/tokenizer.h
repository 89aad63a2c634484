/* tokenizer.h - DeepSeek V4 byte-level BPE, read from the GGUF.
 *
 * The vocabulary (`tokenizer.ggml.tokens`, GPT-2 byte-level strings) and the
 * merge ranks (`tokenizer.ggml.merges`, "A B", rank = index) come from the
 * model file.  Text is pre-split with the DeepSeek-V3 ("joyai-llm") regex set
 * using real Unicode categories, each piece is mapped to byte-level symbols
 * and merged by rank.  The result equals Hugging Face `tokenizers` on the
 * model's tokenizer.json.  Added tokens (GGUF token_type CONTROL or
 * USER_DEFINED: the seven DS4 specials BOS, EOS, User, Assistant, <think>,
 * </think>, DSML among them; only those seven when the file has no token
 * types) become their ids only when the caller says the text is trusted
 * template text (`special`); user text is always encoded as plain text, so it
 * can never inject a control token.  Invalid UTF-8 is encoded byte for byte
 * (each stray byte acts as one character of no category), so any byte string
 * round-trips.  Detokenizing streams: a multi-byte UTF-8 character split
 * across tokens is held back until it is complete.
 */
#ifndef DS4_TOKENIZER_H
#define DS4_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "gguf.h"

typedef struct ds4_tokenizer ds4_tokenizer;

enum ds4_special {
    DS4_TOK_BOS,        /* <｜begin▁of▁sentence｜> */
    DS4_TOK_EOS,        /* <｜end▁of▁sentence｜> */
    DS4_TOK_USER,       /* <｜User｜> */
    DS4_TOK_ASSISTANT,  /* <｜Assistant｜> */
    DS4_TOK_THINK,      /* <think> */
    DS4_TOK_THINK_END,  /* </think> */
    DS4_TOK_DSML,       /* ｜DSML｜ */
    DS4_TOK_N_SPECIAL
};

/* A growable list of token ids. */
typedef struct ds4_tokens {
    int32_t *ids;
    uint32_t n, cap;
} ds4_tokens;

int ds4_tokens_push(ds4_tokens *t, int32_t id, ds4_error *err);
void ds4_tokens_free(ds4_tokens *t);

/* Load from a parsed GGUF (the tokenizer keeps pointers into its mapping:
 * keep the file open while the tokenizer lives).  Fails with a clear message
 * when a key is missing or a special string is absent from the vocabulary. */
int ds4_tokenizer_load(ds4_tokenizer **out, const gguf_file *f, ds4_error *err);
void ds4_tokenizer_free(ds4_tokenizer *t);

uint32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t);
/* Id of a special token (found by its string at load). */
int32_t ds4_tokenizer_special(const ds4_tokenizer *t, enum ds4_special which);
/* The UTF-8 string of a special token. */
const char *ds4_special_text(enum ds4_special which);

/* Append the ids of text[0..len) to out.  special: recognise the added tokens
 * (the DS4 special strings among them, leftmost-longest) inside text as
 * control tokens (trusted template text only). */
int ds4_tokenize(const ds4_tokenizer *t, const char *text, size_t len, bool special, ds4_tokens *out,
                 ds4_error *err);

/* Raw bytes of token id (byte-level decoded; a special token's string).
 * NULL for an id outside the vocabulary. */
const char *ds4_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len);

/* Id of the token whose stored string is text[0..len), or -1: an exact
 * lookup, e.g. "<｜latest_reminder｜>" (ordinary tokens are stored in their
 * byte-level form, " hello" as "\xc4\xa0hello"). */
int32_t ds4_token_find(const ds4_tokenizer *t, const char *text, size_t len);
/* True for the added tokens that `special` text recognises (control tokens). */
bool ds4_token_is_special(const ds4_tokenizer *t, int32_t id);

/* Streaming detokenizer: push ids, get back only complete UTF-8 text.
 * Invalid byte sequences are emitted as U+FFFD once known to be invalid. */
typedef struct ds4_detok {
    unsigned char pending[8];
    size_t n_pending;
} ds4_detok;

/* Writes at most cap bytes to out and returns how many (an id outside the
 * vocabulary writes nothing).  out needs room for ds4_detok_room(t, id)
 * bytes, 3 x the token's bytes + 12 (every invalid byte may become a 3-byte
 * U+FFFD); with less the text is cut at cap, never written past it.
 * ds4_detok_flush emits what is still held (an incomplete character becomes
 * one U+FFFD; 12 bytes of room suffice).  A zeroed ds4_detok is ready.  The
 * concatenated output equals Python's bytes.decode("utf-8", "replace") of the
 * tokens' bytes. */
size_t ds4_detok_room(const ds4_tokenizer *t, int32_t id);
size_t ds4_detok_push(const ds4_tokenizer *t, ds4_detok *d, int32_t id, char *out, size_t cap);
size_t ds4_detok_flush(ds4_detok *d, char *out, size_t cap);

#endif
