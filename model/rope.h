// Rotary embedding frequencies for a model, as transformers computes them
// (ROPE_INIT_FUNCTIONS: default, linear, llama3). Pure function.
#pragma once

#include <vector>

#include "model/config.h"

namespace tessera::model {

// inv_freq[j] = 1 / theta^(2j / head_dim), j < head_dim / 2, then scaled per config.rope_scaling
// (llama3: wavelength-dependent blend of inv_freq and inv_freq / factor; linear: / factor).
// Computed in f32 arithmetic in the order transformers uses.
std::vector<float> RopeInvFreq(const ModelConfig& config);

}  // namespace tessera::model
