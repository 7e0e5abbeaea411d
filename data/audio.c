// audio.c: turns int16 PCM into the log-mel features the model's audio tokens read. It
// exists as its own file because it owns an FFTW plan, whose planning is not thread-safe:
// a featurizer is created in the opening thread and then used by exactly one decoding thread.
//
// Features (documented in data/FORMAT.md, "Audio features"):
//   x = pcm / 32768, zero-padded to audio_len
//   frame t (t < F = 1 + (audio_len - n_fft) / hop) = x[t*hop .. t*hop + n_fft) * hann
//   hann[i] = 0.5 - 0.5 cos(2 pi i / n_fft)                        (periodic Hann)
//   P[k] = |rfft(frame)[k]|^2 / sum(hann^2),  k <= n_fft / 2       (white noise of variance
//                                                                    s^2 gives s^2 per bin)
//   mel[m] = sum_k P[k] * tri_m(k * rate / n_fft)                   (HTK mel scale, 0..rate/2,
//                                                                    triangles peak at 1)
//   out[t, m] = (log(mel[m] + 1e-6) - DATA_LOGMEL_MEAN) / DATA_LOGMEL_STD
// The normalization is a fixed pair of constants, not per clip, so that loudness and silence
// stay visible to the model and a feature means the same thing in every batch.
#include <fftw3.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "data_internal.h"

struct data_featurizer {
    int n_fft, hop, n_mels, n_bins;  // n_bins = n_fft / 2 + 1
    int audio_len, F;                // clip length and frames per clip
    float *window;                   // (n_fft) periodic Hann
    float window_power;              // sum(window^2)
    float *fbank;                    // (n_mels, n_bins) triangle weights
    int *fb_lo, *fb_hi;              // (n_mels) non-zero bin range [lo, hi) of each filter
    float *pcm;                      // (audio_len) scaled, zero-padded input
    float *frame;                    // (n_fft) FFTW input (fftwf_malloc'd: SIMD aligned)
    fftwf_complex *spec;             // (n_bins) FFTW output
    float *power;                    // (n_bins)
    fftwf_plan plan;
};

int data_audio_frames(const data_schema *s, const data_audio_cfg *a) {
    if (a->hop <= 0 || a->n_fft <= 0 || s->audio_len < a->n_fft) return 0;
    return 1 + (s->audio_len - a->n_fft) / a->hop;
}

int data_audio_check(const data_schema *s, const data_audio_cfg *a, mm_err *err) {
    if (a->n_fft < 4) return mm_fail(err, "audio: n_fft %d must be >= 4", a->n_fft);
    if (a->n_fft > s->audio_len)
        return mm_fail(err, "audio: n_fft %d exceeds the clip length audio_len %d", a->n_fft,
                       s->audio_len);
    if (a->hop < 1) return mm_fail(err, "audio: hop %d must be >= 1", a->hop);
    if (a->n_mels < 1 || a->n_mels > a->n_fft / 2 + 1)
        return mm_fail(err, "audio: n_mels %d must be in [1, n_fft/2 + 1 = %d]", a->n_mels,
                       a->n_fft / 2 + 1);
    if (s->audio_rate < 1) return mm_fail(err, "audio: sample rate %d must be >= 1", s->audio_rate);
    return 0;
}

static double hz_to_mel(double f) {
    return 2595.0 * log10(1.0 + f / 700.0);
}
static double mel_to_hz(double m) {
    return 700.0 * (pow(10.0, m / 2595.0) - 1.0);
}

// Creates the plan and filterbank. The settings must have passed data_audio_check (the
// loader and mmdata check them with a clear error first), so a bad one here is a bug and
// aborts. Call from one thread at a time (FFTW's planner is not thread-safe). The caller
// owns the result and frees it with data_featurizer_free.
data_featurizer *data_featurizer_new(const data_schema *s, const data_audio_cfg *a) {
    mm_err err;
    MM_CHECK(data_audio_check(s, a, &err) == 0, "%s", err.msg);
    data_featurizer *f = mm_calloc(1, sizeof(*f));
    f->n_fft = a->n_fft;
    f->hop = a->hop;
    f->n_mels = a->n_mels;
    f->n_bins = a->n_fft / 2 + 1;
    f->audio_len = s->audio_len;
    f->F = data_audio_frames(s, a);
    f->window = mm_malloc(sizeof(float) * (size_t)f->n_fft);
    f->window_power = 0.0f;
    for (int i = 0; i < f->n_fft; i++) {
        f->window[i] = (float)(0.5 - 0.5 * cos(2.0 * M_PI * i / f->n_fft));
        f->window_power += f->window[i] * f->window[i];
    }
    // Filter m rises from edge m to edge m+1 and falls to edge m+2; edges are equally
    // spaced in mel between 0 and Nyquist, as HTK does.
    f->fbank = mm_calloc((size_t)f->n_mels * (size_t)f->n_bins, sizeof(float));
    f->fb_lo = mm_calloc((size_t)f->n_mels, sizeof(int));
    f->fb_hi = mm_calloc((size_t)f->n_mels, sizeof(int));
    double mel_max = hz_to_mel(0.5 * s->audio_rate);
    for (int m = 0; m < f->n_mels; m++) {
        double lo = mel_to_hz(mel_max * m / (f->n_mels + 1));
        double mid = mel_to_hz(mel_max * (m + 1) / (f->n_mels + 1));
        double hi = mel_to_hz(mel_max * (m + 2) / (f->n_mels + 1));
        f->fb_lo[m] = f->n_bins;
        f->fb_hi[m] = 0;
        for (int k = 0; k < f->n_bins; k++) {
            double hz = (double)k * s->audio_rate / f->n_fft;
            double w = fmin((hz - lo) / (mid - lo), (hi - hz) / (hi - mid));
            if (w <= 0.0) continue;
            f->fbank[(size_t)m * f->n_bins + k] = (float)w;
            if (k < f->fb_lo[m]) f->fb_lo[m] = k;
            f->fb_hi[m] = k + 1;
        }
    }
    f->pcm = mm_calloc((size_t)f->audio_len, sizeof(float));
    f->frame = fftwf_malloc(sizeof(float) * (size_t)f->n_fft);
    f->spec = fftwf_malloc(sizeof(fftwf_complex) * (size_t)f->n_bins);
    MM_CHECK(f->frame && f->spec, "out of memory allocating FFT buffers");
    f->power = mm_calloc((size_t)f->n_bins, sizeof(float));
    // FFTW_ESTIMATE: no timing runs, so the plan (and the features) are the same every run.
    f->plan = fftwf_plan_dft_r2c_1d(f->n_fft, f->frame, f->spec, FFTW_ESTIMATE);
    MM_CHECK(f->plan, "FFTW could not plan a real FFT of size %d", f->n_fft);
    return f;
}

void data_featurizer_dims(const data_featurizer *f, int *frames, int *n_mels) {
    *frames = f->F;
    *n_mels = f->n_mels;
}

void data_featurizer_free(data_featurizer *f) {
    if (!f) return;
    fftwf_destroy_plan(f->plan);
    fftwf_free(f->frame);
    fftwf_free(f->spec);
    free(f->window);
    free(f->fbank);
    free(f->fb_lo);
    free(f->fb_hi);
    free(f->pcm);
    free(f->power);
    free(f);
}

// pcm holds n samples (n <= audio_len, the rest counts as silence); out is (F, n_mels) and
// owned by the caller. Uses f's scratch buffers, so one featurizer serves one thread.
void data_featurize_audio(data_featurizer *f, const int16_t *pcm, int n, float *out) {
    MM_CHECK(n >= 0 && n <= f->audio_len, "audio clip of %d samples exceeds audio_len %d", n,
             f->audio_len);
    for (int i = 0; i < n; i++) f->pcm[i] = (float)pcm[i] * (1.0f / 32768.0f);
    memset(f->pcm + n, 0, sizeof(float) * (size_t)(f->audio_len - n));
    for (int t = 0; t < f->F; t++) {
        const float *x = f->pcm + (size_t)t * f->hop;
        for (int i = 0; i < f->n_fft; i++) f->frame[i] = x[i] * f->window[i];
        fftwf_execute(f->plan);
        for (int k = 0; k < f->n_bins; k++) {
            float re = f->spec[k][0], im = f->spec[k][1];
            f->power[k] = (re * re + im * im) / f->window_power;
        }
        float *o = out + (size_t)t * f->n_mels;  // (n_mels)
        for (int m = 0; m < f->n_mels; m++) {
            const float *w = f->fbank + (size_t)m * f->n_bins;
            float e = 0.0f;
            for (int k = f->fb_lo[m]; k < f->fb_hi[m]; k++) e += w[k] * f->power[k];
            o[m] = (logf(e + DATA_LOGMEL_FLOOR) - DATA_LOGMEL_MEAN) / DATA_LOGMEL_STD;
        }
    }
}
