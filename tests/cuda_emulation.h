/* Just enough CUDA to run srigl_np's kernel files as plain C++ on the CPU (see
   tests/cuda_emulation.py): the qualifiers compile away, the built-in index variables
   are globals, and run() executes a launch as every (block, thread) in turn. Sequential
   execution is a valid schedule only for kernels whose threads never wait for each other
   (no __syncthreads, shared memory, warp shuffles or atomics); any use of those fails to
   compile here, because this header does not define them. */
#include <cstddef>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __forceinline__ inline

struct emulated_dim3 { unsigned x, y, z; };
static emulated_dim3 blockIdx, threadIdx, blockDim, gridDim;

namespace emulation {

/* The kernel's parameters from CUDA's launch convention: args[i] points at parameter i. */
template <typename... P, std::size_t... Is>
void run_all(void (*kernel)(P...), const unsigned* grid, const unsigned* block, void** args,
             std::index_sequence<Is...>)
{
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx)
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            blockIdx = {bx, by, bz};
                            threadIdx = {tx, ty, tz};
                            kernel(*static_cast<std::remove_cv_t<P>*>(args[Is])...);
                        }
}

template <typename... P>
void run(void (*kernel)(P...), const unsigned* grid, const unsigned* block, void** args)
{
    run_all(kernel, grid, block, args, std::index_sequence_for<P...>{});
}

}  // namespace emulation
