/* CUDA kernels of srigl_np's condensed training products (compiled at run time by CuPy's
   RawModule, see srigl_np/cuda_training.py, which launches them on operands that
   training_kernels has validated: dtypes, shapes, C-contiguity, every index in
   [0, n_in)). T is float or double, I short or int (int16/int32 indices). The
   activations are in the batch-last "column" layout of the CPU kernels: x_t[n_in, m],
   dy_t[n, m], m = batch (Linear) or batch*out_h*out_w (Conv2d's im2col columns).

   forward_columns<T, I>      values[n, k], indices[n, k], x_t[n_in, m], bias[n]
                              -> y_t[n, m];  y_t[r, c] = bias[r] + sum_j values[r, j] *
                              x_t[indices[r, j], c]. One thread per output, threads of a
                              warp on consecutive columns c of one row: the row's value and
                              index are a broadcast load, the gathered x_t reads and the
                              y_t write are coalesced.

   input_grad_gather<T>       values[nnz] (flat), the transposed index indptr[n_in + 1],
                              rows[nnz], positions[nnz] (training_kernels.transposed_index),
                              dy_t[n, m] -> dx_t[n_in, m];  dx_t[i, c] = sum over input i's
                              entries e of values[positions[e]] * dy_t[rows[e], c]. A
                              gather: one thread per output, summed in registers in entry
                              order (neuron, slot) and written once, so no atomics and the
                              same result on every run (a scatter over the neurons would
                              need atomicAdd, whose order varies run to run).

   weight_grad_columns<T, I>  indices[nnz] (flat), x_t[n_in, m], dy_t[n, m]
                              -> partial[segments, nnz];  partial[s, e] = sum over the
                              columns c of segment s of dy_t[e / k, c] * x_t[indices[e], c]
                              (an SDDMM: the dense dy_t x_t^T read at the stored positions
                              only). One thread per (stored weight, column segment), the
                              columns in the inner loop; the caller sums the segments
                              (fixed shape, so a fixed order). Segments give a small layer
                              with a long column axis (a convolution's batch*out_h*out_w)
                              enough threads.

   No kernel uses shared memory, __syncthreads, warp shuffles or atomics: each thread's
   result depends on its own loop only. That keeps them deterministic and lets the tests
   run this file as plain C++ (tests/cuda_emulation.py: every (block, thread) in turn).
   Rows (and segments) run over gridDim.y, which CUDA caps at 65535, so the row loops
   stride by the grid. */

template <typename T, typename I>
__global__ void forward_columns(const T* __restrict__ values,
                                const I* __restrict__ indices,
                                const T* __restrict__ x_t,
                                const T* __restrict__ bias,
                                T* __restrict__ y_t,
                                int n, int k, long long m)
{
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= m) return;
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < n;
         r += (long long)gridDim.y * blockDim.y) {
        const T* v = values + r * k;
        const I* ix = indices + r * k;
        T acc = 0;
        for (int j = 0; j < k; ++j) acc += v[j] * x_t[(long long)ix[j] * m + c];
        y_t[r * m + c] = acc + bias[r];
    }
}

template <typename T>
__global__ void input_grad_gather(const T* __restrict__ values,
                                  const long long* __restrict__ indptr,
                                  const int* __restrict__ rows,
                                  const long long* __restrict__ positions,
                                  const T* __restrict__ dy_t,
                                  T* __restrict__ dx_t,
                                  int n_in, long long m)
{
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= m) return;
    for (long long i = (long long)blockIdx.y * blockDim.y + threadIdx.y; i < n_in;
         i += (long long)gridDim.y * blockDim.y) {
        T acc = 0;
        for (long long e = indptr[i]; e < indptr[i + 1]; ++e)
            acc += values[positions[e]] * dy_t[(long long)rows[e] * m + c];
        dx_t[i * m + c] = acc;
    }
}

template <typename T, typename I>
__global__ void weight_grad_columns(const I* __restrict__ indices,
                                    const T* __restrict__ x_t,
                                    const T* __restrict__ dy_t,
                                    T* __restrict__ partial,
                                    long long nnz, int k, long long m, long long segment)
{
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= nnz) return;
    const T* dy_row = dy_t + (e / k) * m;
    const T* x_row = x_t + (long long)indices[e] * m;
    for (long long s = (long long)blockIdx.y * blockDim.y + threadIdx.y; s * segment < m;
         s += (long long)gridDim.y * blockDim.y) {
        long long end = (s + 1) * segment < m ? (s + 1) * segment : m;
        T acc = 0;
        for (long long c = s * segment; c < end; ++c) acc += dy_row[c] * x_row[c];
        partial[s * nnz + e] = acc;
    }
}
