// model_drop.h: the counter-based draws behind the transformer's dropout and modality dropout,
// written once for C (the CPU ops, transformer.c) and CUDA (the kernels, and the emulator's
// host C++), so that a CPU and a GPU drop bitwise the same elements.
//
// Why counters and not a stream of random numbers: a mask must not depend on the layout. A
// stream would depend on which rank, thread or micro-batch draws first; a hash of the
// element's coordinates does not. Every draw is a function of
//   (run seed, optimizer step, global sample id)   -> the sample's key (host, once per batch)
//   (layer, site)                                 -> the site (one per dropout in the model)
//   element index in the FULL unsharded tensor of that sample
// so dp ranks, micro-batch splits and tp slices (which index the full tensor: a rank's heads
// start at head0) draw the same bit for the same element, resume redraws the same masks, and
// recomputation (model.recompute) rebuilds them without a stored mask.
//
// The mixer is the finalizer of splitmix64 (Steele, Lea and Flood 2014; Stafford's "mix13"
// constants): a bijection of 64 bits whose output bits each depend on every input bit. The
// element draw is that finalizer on key + e * golden ratio, i.e. splitmix64's output at
// position e of the stream seeded with the key. The top 24 bits are the uniform: an element
// is dropped iff they are < thr = round(p * 2^24), an integer test that both backends make
// exactly.
#ifndef MM_MODEL_DROP_H
#define MM_MODEL_DROP_H

#include <stdint.h>

#if defined(__CUDACC__) || (defined(MM_CUDA_EMU) && defined(__cplusplus))
#define MODEL_DROP_FN __host__ __device__ static inline
#else
#define MODEL_DROP_FN static inline
#endif

// Where a dropout sits; the site key is (layer, place).
enum {
    MODEL_DROP_EMBD = 0,      // the block-0 input (embeddings plus positions), layer 0
    MODEL_DROP_ATTN_P = 1,    // the attention probabilities
    MODEL_DROP_ATTN_OUT = 2,  // the attention branch (after attn.proj), before the residual add
    MODEL_DROP_MLP_OUT = 3,   // the MLP branch (after mlp.proj), before the residual add
    MODEL_DROP_MODALITY = 4   // the per-sample modality-dropout draw, layer 0
};

// Draws of 24 bits: p is a multiple of 2^-24 after rounding.
#define MODEL_DROP_BITS 24

MODEL_DROP_FN uint64_t model_drop_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define MODEL_DROP_GOLDEN 0x9e3779b97f4a7c15ULL

// The key of one sample's draws at one optimizer step of a run (three rounds: seed, step and
// id each pass through the mixer before the next is folded in).
MODEL_DROP_FN uint64_t model_drop_sample_key(uint64_t seed, uint64_t step, uint64_t id) {
    uint64_t k = model_drop_mix(seed ^ 0x6d6d647270ULL);  // "mmdrp": apart from init's streams
    k = model_drop_mix(k + step * MODEL_DROP_GOLDEN);
    return model_drop_mix(k + id * MODEL_DROP_GOLDEN);
}

// The key of one site's draws for a sample (its key, the layer, the place).
MODEL_DROP_FN uint64_t model_drop_site_key(uint64_t sample_key, int layer, int place) {
    return model_drop_mix(sample_key ^ ((uint64_t)(uint32_t)layer << 8 | (uint64_t)place));
}

// The 24-bit draw of element e under a site key.
MODEL_DROP_FN uint32_t model_drop_draw(uint64_t site_key, uint64_t e) {
    return (uint32_t)(model_drop_mix(site_key + e * MODEL_DROP_GOLDEN) >> (64 - MODEL_DROP_BITS));
}

// 1 when element e survives (draw >= thr).
MODEL_DROP_FN int model_drop_keep(uint64_t site_key, uint64_t e, uint32_t thr) {
    return model_drop_draw(site_key, e) >= thr;
}

#endif  // MM_MODEL_DROP_H
