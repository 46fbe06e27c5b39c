// BatchNorm (training statistics) followed by PReLU over a channels_last tensor, forward and backward,
// in fewer passes over the activations than the two stock kernels take: forward reads x twice (the
// statistics, then normalise and activate) and writes y once; backward reads x and the output
// gradient twice (the per-channel sums of BatchNorm's backward and PReLU's weight gradient in one
// pass, then the input gradient) and writes the input gradient once. The BatchNorm output z is never
// stored: backward recomputes it from x.
//
// A channels_last [N, C, H, W] tensor is the row-major [rows = N*H*W, C] matrix, so every loop runs
// over rows with the channels contiguous in the inner loop (vectorised by the compiler). Per-channel
// sums are taken in float over blocks of rows, then added in double, per thread.
//
// Built by runtime.native with -fopenmp; the OpenMP runtime is torch's own (same soname, already
// loaded). Called through ctypes from backbone.layers, which checks shapes, dtypes and layout.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#include <vector>

namespace {

const int64_t kBlockRows = 64;

inline float load(const float* data, int64_t i) { return data[i]; }
inline void store(float* data, int64_t i, float value) { data[i] = value; }

// bfloat16 is the upper half of a float's bits; stores round to nearest even, and keep NaN a NaN.
inline float load(const uint16_t* data, int64_t i) {
  uint32_t bits = uint32_t(data[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
inline void store(uint16_t* data, int64_t i, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  data[i] = (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t((bits >> 16) | 0x40u) : uint16_t(rounded);
}

// Rows [begin, end) of thread t of n.
inline void thread_rows(int64_t rows, int64_t* begin, int64_t* end) {
  int t = omp_get_thread_num(), n = omp_get_num_threads();
  *begin = rows * t / n;
  *end = rows * (t + 1) / n;
}

template <typename T>
void forward(const T* x, T* y, int64_t rows, int64_t channels, const float* gamma, const float* beta,
             const float* slope, double eps, double momentum, float* running_mean, float* running_var,
             float* mean_out, float* invstd_out, int threads) {
  const int64_t C = channels;
  // Sums of (x - shift) and its square, shifted by the first row so that a large mean does not
  // cancel the variance's digits.
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = load(x, c);
  std::vector<double> sums(threads * C, 0.0), squares(threads * C, 0.0);
#pragma omp parallel num_threads(threads)
  {
    int64_t begin, end;
    thread_rows(rows, &begin, &end);
    double* sum = &sums[omp_get_thread_num() * C];
    double* square = &squares[omp_get_thread_num() * C];
    std::vector<float> block_sum(C), block_square(C);
    for (int64_t first = begin; first < end; first += kBlockRows) {
      int64_t last = first + kBlockRows < end ? first + kBlockRows : end;
      for (int64_t c = 0; c < C; ++c) block_sum[c] = block_square[c] = 0.f;
      for (int64_t r = first; r < last; ++r) {
        const T* row = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float d = load(row, c) - shift[c];
          block_sum[c] += d;
          block_square[c] += d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        sum[c] += block_sum[c];
        square[c] += block_square[c];
      }
    }
  }
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0, square = 0;
    for (int t = 0; t < threads; ++t) {
      sum += sums[t * C + c];
      square += squares[t * C + c];
    }
    double centred = sum / rows;  // the mean minus the shift
    double var = square / rows - centred * centred;
    if (var < 0) var = 0;
    double mean = shift[c] + centred, invstd = 1.0 / std::sqrt(var + eps);
    mean_out[c] = float(mean);
    invstd_out[c] = float(invstd);
    // As BatchNorm: the running variance takes the unbiased estimate.
    running_mean[c] = float((1 - momentum) * running_mean[c] + momentum * mean);
    running_var[c] = float((1 - momentum) * running_var[c] + momentum * var * rows / (rows - 1));
    scale[c] = float(gamma[c] * invstd);
    offset[c] = float(beta[c] - mean * gamma[c] * invstd);
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * C;
    T* out = y + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      float z = load(in, c) * scale[c] + offset[c];
      store(out, c, z > 0.f ? z : z * slope[c]);
    }
  }
}

template <typename T>
void backward(const T* grad, const T* x, T* grad_x, int64_t rows, int64_t channels, const float* mean,
              const float* invstd, const float* gamma, const float* beta, const float* slope, float* grad_gamma,
              float* grad_beta, float* grad_slope, int threads) {
  const int64_t C = channels;
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = gamma[c] * invstd[c];
    offset[c] = beta[c] - mean[c] * scale[c];
  }
  // Per channel, with dz = PReLU's input gradient: sum dz, sum dz (x - mean), sum grad z over z <= 0.
  std::vector<double> dz_sums(threads * C, 0.0), dz_x_sums(threads * C, 0.0), slope_sums(threads * C, 0.0);
#pragma omp parallel num_threads(threads)
  {
    int64_t begin, end;
    thread_rows(rows, &begin, &end);
    int t = omp_get_thread_num();
    std::vector<float> block_dz(C), block_dz_x(C), block_slope(C);
    for (int64_t first = begin; first < end; first += kBlockRows) {
      int64_t last = first + kBlockRows < end ? first + kBlockRows : end;
      for (int64_t c = 0; c < C; ++c) block_dz[c] = block_dz_x[c] = block_slope[c] = 0.f;
      for (int64_t r = first; r < last; ++r) {
        const T* in = x + r * C;
        const T* g = grad + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float value = load(in, c), gradient = load(g, c);
          float z = value * scale[c] + offset[c];
          bool negative = !(z > 0.f);  // as torch's PReLU: the slope applies at z <= 0
          float dz = negative ? gradient * slope[c] : gradient;
          block_dz[c] += dz;
          block_dz_x[c] += dz * (value - mean[c]);
          block_slope[c] += negative ? gradient * z : 0.f;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        dz_sums[t * C + c] += block_dz[c];
        dz_x_sums[t * C + c] += block_dz_x[c];
        slope_sums[t * C + c] += block_slope[c];
      }
    }
  }
  // BatchNorm's input gradient: gamma invstd (dz - mean(dz) - xhat mean(dz xhat)), xhat = (x - mean)
  // invstd, taken as gamma invstd (dz - mean(dz)) - k (x - mean) per channel: the differences come
  // first, so that a gradient that nearly cancels keeps its digits.
  std::vector<float> dz_mean(C), dz_coef(C), x_coef(C);
  for (int64_t c = 0; c < C; ++c) {
    double dz = 0, dz_x = 0, s = 0;
    for (int t = 0; t < threads; ++t) {
      dz += dz_sums[t * C + c];
      dz_x += dz_x_sums[t * C + c];
      s += slope_sums[t * C + c];
    }
    double dz_xhat = dz_x * invstd[c];
    grad_beta[c] = float(dz);
    grad_gamma[c] = float(dz_xhat);
    grad_slope[c] = float(s);
    double g = double(gamma[c]) * invstd[c];
    dz_mean[c] = float(dz / rows);
    dz_coef[c] = float(g);
    x_coef[c] = float(g * invstd[c] * dz_xhat / rows);
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = x + r * C;
    const T* g = grad + r * C;
    T* out = grad_x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      float value = load(in, c), gradient = load(g, c);
      float z = value * scale[c] + offset[c];
      float dz = z > 0.f ? gradient : gradient * slope[c];
      store(out, c, dz_coef[c] * (dz - dz_mean[c]) - x_coef[c] * (value - mean[c]));
    }
  }
}

}  // namespace

extern "C" {

// x, y: [rows, channels], bfloat16 (as uint16) where `bf16` is nonzero, else float; gamma, beta,
// slope, running_mean, running_var, mean_out, invstd_out: [channels] float. Updates the running
// statistics in place.
void batchnorm_prelu_forward(const void* x, void* y, int64_t rows, int64_t channels, const float* gamma,
                             const float* beta, const float* slope, double eps, double momentum, float* running_mean,
                             float* running_var, float* mean_out, float* invstd_out, int bf16, int threads) {
  if (bf16)
    forward(static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), rows, channels, gamma, beta, slope, eps,
            momentum, running_mean, running_var, mean_out, invstd_out, threads);
  else
    forward(static_cast<const float*>(x), static_cast<float*>(y), rows, channels, gamma, beta, slope, eps, momentum,
            running_mean, running_var, mean_out, invstd_out, threads);
}

// grad, x, grad_x: [rows, channels] in x's type (as for the forward); the rest [channels] float.
void batchnorm_prelu_backward(const void* grad, const void* x, void* grad_x, int64_t rows, int64_t channels,
                              const float* mean, const float* invstd, const float* gamma, const float* beta,
                              const float* slope, float* grad_gamma, float* grad_beta, float* grad_slope, int bf16,
                              int threads) {
  if (bf16)
    backward(static_cast<const uint16_t*>(grad), static_cast<const uint16_t*>(x), static_cast<uint16_t*>(grad_x),
             rows, channels, mean, invstd, gamma, beta, slope, grad_gamma, grad_beta, grad_slope, threads);
  else
    backward(static_cast<const float*>(grad), static_cast<const float*>(x), static_cast<float*>(grad_x), rows,
             channels, mean, invstd, gamma, beta, slope, grad_gamma, grad_beta, grad_slope, threads);
}

}  // extern "C"
