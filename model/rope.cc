#include "model/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace tessera::model {

// Mirrors transformers' modeling_rope_utils step by step in f32. Python scalars meet f32 tensors
// as f32 values, and `scalar / tensor` is `tensor.reciprocal() * scalar` (torch's __rdiv__).
std::vector<float> RopeInvFreq(const ModelConfig& config) {
  const int64_t dim = config.head_dim;
  const float base = static_cast<float>(config.rope_theta);
  std::vector<float> inv_freq;
  inv_freq.reserve(static_cast<size_t>(dim / 2 + 1));
  // 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
  for (int64_t i = 0; i < dim; i += 2) {
    const float exponent = static_cast<float>(i) / static_cast<float>(dim);
    inv_freq.push_back(1.0f / std::pow(base, exponent));
  }
  const RopeScaling& scaling = config.rope_scaling;
  const float factor = static_cast<float>(scaling.factor);
  switch (scaling.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (float& f : inv_freq) f = f / factor;
      break;
    case RopeScaling::Type::kLlama3: {
      const double old_context_len = static_cast<double>(scaling.original_max_position_embeddings);
      // Python floats, then f32 when compared with or applied to tensors.
      const float low_freq_wavelen = static_cast<float>(old_context_len / scaling.low_freq_factor);
      const float high_freq_wavelen =
          static_cast<float>(old_context_len / scaling.high_freq_factor);
      const float two_pi = static_cast<float>(2 * M_PI);
      const float old_context = static_cast<float>(old_context_len);
      const float low = static_cast<float>(scaling.low_freq_factor);
      const float span = static_cast<float>(scaling.high_freq_factor - scaling.low_freq_factor);
      for (float& f : inv_freq) {
        const float wavelen = (1.0f / f) * two_pi;
        const float inv_freq_llama = wavelen > low_freq_wavelen ? f / factor : f;
        const float smooth = ((1.0f / wavelen) * old_context - low) / span;
        const float smoothed = (1.0f - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama;
        const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        f = is_medium ? smoothed : inv_freq_llama;
      }
      break;
    }
  }
  return inv_freq;
}

}  // namespace tessera::model
