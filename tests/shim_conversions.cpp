// Exposes cpu_shim.h's 16-bit conversions to the tests (test_half.py), which
// compare them with NumPy's float16 and ml_dtypes' bfloat16 bit patterns.
#include "cpu_shim.h"

extern "C" {

void half_to_float(const std::uint16_t* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}

void float_to_half(const float* in, std::uint16_t* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).bits;
}

void bfloat16_to_float(const std::uint16_t* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __bfloat162float(__nv_bfloat16{in[i]});
}

void float_to_bfloat16(const float* in, std::uint16_t* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]).bits;
}
}
