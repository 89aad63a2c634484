/* quant.h - tensor element types and the block formats of the ds4 GGUFs.
 *
 * Type ids are GGML's (they are what GGUF files store).  Every format used by
 * the DeepSeek V4 Flash files has a plain block struct whose size is asserted,
 * a reference dequantizer (the ground truth the OpenCL kernels are tested
 * against) and, for the quantized ones, a quantizer from f32 used to build test
 * models and convert checkpoints.  Bit layouts are GGML's, byte for byte.
 *
 * The traits table also knows the block geometry of the other GGML types, so
 * the GGUF reader can bound-check files that carry tensors we never compute
 * with.  This module knows nothing about files or devices.
 */
#ifndef DS4_QUANT_H
#define DS4_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ds4_type {
    DS4_TYPE_F32 = 0,
    DS4_TYPE_F16 = 1,
    DS4_TYPE_Q4_0 = 2,
    DS4_TYPE_Q4_1 = 3,
    DS4_TYPE_Q5_0 = 6,
    DS4_TYPE_Q5_1 = 7,
    DS4_TYPE_Q8_0 = 8,
    DS4_TYPE_Q8_1 = 9,
    DS4_TYPE_Q2_K = 10,
    DS4_TYPE_Q3_K = 11,
    DS4_TYPE_Q4_K = 12,
    DS4_TYPE_Q5_K = 13,
    DS4_TYPE_Q6_K = 14,
    DS4_TYPE_Q8_K = 15,
    DS4_TYPE_IQ2_XXS = 16,
    DS4_TYPE_IQ2_XS = 17,
    DS4_TYPE_IQ3_XXS = 18,
    DS4_TYPE_IQ1_S = 19,
    DS4_TYPE_IQ4_NL = 20,
    DS4_TYPE_IQ3_S = 21,
    DS4_TYPE_IQ2_S = 22,
    DS4_TYPE_IQ4_XS = 23,
    DS4_TYPE_I8 = 24,
    DS4_TYPE_I16 = 25,
    DS4_TYPE_I32 = 26,
    DS4_TYPE_I64 = 27,
    DS4_TYPE_F64 = 28,
    DS4_TYPE_IQ1_M = 29,
    DS4_TYPE_BF16 = 30,
    DS4_TYPE_TQ1_0 = 34,
    DS4_TYPE_TQ2_0 = 35,
    DS4_TYPE_MXFP4 = 39,
    DS4_TYPE_COUNT = 40 /* one past the largest id in the table */
};

typedef struct ds4_type_traits {
    const char *name;     /* "F32", "Q8_0", "IQ2_XXS", ... */
    uint32_t block_size;  /* values per block (1 for plain types) */
    uint32_t type_size;   /* bytes per block */
    bool supported;       /* ds4cl can dequantize it and has kernels for it */
    bool quantizable;     /* ds4_quantize_row accepts it */
} ds4_type_traits;

/* Traits of a GGML type id, or NULL when the id is unknown. */
const ds4_type_traits *ds4_type_get(uint32_t type);
/* Name of a type id ("?" when unknown). */
const char *ds4_type_name(uint32_t type);
/* Type id for a name (case-insensitive: "q8_0", "IQ2_XXS"), or -1. */
int ds4_type_from_name(const char *name);
/* Bytes of a row of n values; 0 when the type is unknown or n is not a
 * multiple of the block size. */
uint64_t ds4_row_bytes(uint32_t type, uint64_t n);

/* --- block formats (GGML layouts) --- */
#define DS4_QK8_0 32
#define DS4_QK_K 256

typedef struct {
    uint16_t d;              /* f16 scale */
    int8_t qs[DS4_QK8_0];    /* value = d * q */
} ds4_block_q8_0;

typedef struct {
    uint8_t scales[DS4_QK_K / 16]; /* low nibble scale, high nibble min, per 16 values */
    uint8_t qs[DS4_QK_K / 4];      /* 2-bit codes */
    uint16_t d;                    /* f16 super-block scale for scales */
    uint16_t dmin;                 /* f16 super-block scale for mins */
} ds4_block_q2_K;

typedef struct {
    uint16_t d;          /* f16 super-block scale for scales */
    uint16_t dmin;       /* f16 super-block scale for mins */
    uint8_t scales[12];  /* 8 packed 6-bit (scale, min) pairs */
    uint8_t qs[DS4_QK_K / 2]; /* 4-bit codes */
} ds4_block_q4_K;

typedef struct {
    uint16_t d;                /* f16 super-block scale */
    uint16_t qs[DS4_QK_K / 8]; /* 8 groups of 32 values: 2 x u32 each (grid idx bytes, signs+scale) */
} ds4_block_iq2_xxs;

_Static_assert(sizeof(ds4_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(ds4_block_q2_K) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(ds4_block_q4_K) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(ds4_block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");

/* IEEE half and bfloat16 conversions (round to nearest even). */
float ds4_f16_to_f32(uint16_t h);
uint16_t ds4_f32_to_f16(float f);
float ds4_bf16_to_f32(uint16_t h);
uint16_t ds4_f32_to_bf16(float f);

/* Dequantize n values (n a multiple of the block size) of a supported type
 * (F32, F16, BF16, I32 (converted), Q8_0, Q2_K, Q4_K, IQ2_XXS) to f32.
 * Returns 0, or -1 when the type is unsupported or n is not whole blocks. */
int ds4_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* Quantize n f32 values (whole blocks) to F32, F16, BF16, Q8_0, Q2_K, Q4_K or
 * IQ2_XXS.  `importance` is NULL or n non-negative weights (an imatrix row):
 * the quantizer then minimises the importance-weighted squared error.
 * Returns 0, or -1 when the type is not quantizable or n is not whole blocks.
 * Deterministic: same input, same bytes. */
int ds4_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n,
                     const float *importance);

#endif
