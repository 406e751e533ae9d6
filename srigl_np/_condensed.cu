/* CUDA kernels of srigl_np's condensed product (compiled at run time by CuPy's RawModule,
   see srigl_np/cuda.py). Inputs are validated once by cuda.CudaCondensedWeights and
   per call by cuda.condensed_product: every index lies in [0, n_in).

   condensed_warp_rows<I>  values[n_active, k] float32, indices[n_active, k] I (int16
                           or int32), x[batch, n_in] float32, bias[n_active] float32
                           -> y[batch, n_active] float32.
                           One warp per output element; lanes stride over the row's k
                           non-zeros (coalesced reads of values and indices), then a
                           shuffle reduction. For batch 1 and small batches, where there
                           is too little work per row to tile.

   condensed_batch_t<I>    values[n_active, k], indices[n_active, k], xT[n_in, batch]
                           float32, bias[n_active] -> yT[n_active, batch] float32.
                           One thread per output element, threads of a warp on
                           consecutive batch columns of the same row: the row's value and
                           index are one broadcast load, each gathered input is a
                           coalesced 128-byte read of xT, and the write of yT is
                           coalesced. */
template <typename I>
__global__ void condensed_warp_rows(const float* __restrict__ values,
                                    const I* __restrict__ indices,
                                    const float* __restrict__ x,
                                    const float* __restrict__ bias,
                                    float* __restrict__ y,
                                    int n_active, int k, int n_in, int batch)
{
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long long)n_active * batch) return;
    int row = (int)(warp % n_active);
    int b = (int)(warp / n_active);
    const float* v = values + (long long)row * k;
    const I* ix = indices + (long long)row * k;
    const float* xb = x + (long long)b * n_in;
    float acc = 0.0f;
    for (int t = lane; t < k; t += 32) acc += v[t] * xb[ix[t]];
    for (int offset = 16; offset > 0; offset >>= 1)
        acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) y[(long long)b * n_active + row] = acc + bias[row];
}

template <typename I>
__global__ void condensed_batch_t(const float* __restrict__ values,
                                  const I* __restrict__ indices,
                                  const float* __restrict__ xT,
                                  const float* __restrict__ bias,
                                  float* __restrict__ yT,
                                  int n_active, int k, int batch)
{
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (b >= batch || row >= n_active) return;
    const float* v = values + (long long)row * k;
    const I* ix = indices + (long long)row * k;
    float acc0 = 0.0f, acc1 = 0.0f;
    int t = 0;
    for (; t + 1 < k; t += 2) {  // two chains hide the gather latency
        acc0 += v[t] * xT[(long long)ix[t] * batch + b];
        acc1 += v[t + 1] * xT[(long long)ix[t + 1] * batch + b];
    }
    if (t < k) acc0 += v[t] * xT[(long long)ix[t] * batch + b];
    yT[(long long)row * batch + b] = acc0 + acc1 + bias[row];
}
