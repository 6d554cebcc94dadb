# Detects the optional vendor backends. Each TESSERA_WITH_<X> defaults to whether <X> is found;
# passing -DTESSERA_WITH_<X>=OFF turns it off, =ON makes its absence an error.
include(CheckLanguage)

# CUDA: the toolkit at /usr/local/cuda (or wherever nvcc is on PATH / CUDACXX points).
if(NOT DEFINED TESSERA_WITH_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(_cuda_default ON)
  else()
    set(_cuda_default OFF)
  endif()
  set(TESSERA_WITH_CUDA ${_cuda_default} CACHE BOOL "Build the CUDA backend")
endif()
if(TESSERA_WITH_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  set(CMAKE_CUDA_ARCHITECTURES "80;90a" CACHE STRING "CUDA architectures to build for")
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
endif()

# NCCL: with CUDA only; the library ships with the toolkit here. Elsewhere it may come only
# with PyTorch's wheel (nvidia-nccl-cu13: lib/libnccl.so.2, no libnccl.so): name its folder in
# TESSERA_NCCL_ROOT (-D or the environment).
if(NOT DEFINED TESSERA_NCCL_ROOT AND DEFINED ENV{TESSERA_NCCL_ROOT})
  set(TESSERA_NCCL_ROOT "$ENV{TESSERA_NCCL_ROOT}")
endif()
if(NOT DEFINED TESSERA_WITH_NCCL)
  set(_nccl_default OFF)
  if(TESSERA_WITH_CUDA)
    find_library(TESSERA_NCCL_LIBRARY NAMES nccl libnccl.so.2
                 HINTS ${TESSERA_NCCL_ROOT}/lib ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
    find_path(TESSERA_NCCL_INCLUDE_DIR nccl.h
              HINTS ${TESSERA_NCCL_ROOT}/include ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
    if(TESSERA_NCCL_LIBRARY AND TESSERA_NCCL_INCLUDE_DIR)
      set(_nccl_default ON)
    endif()
  endif()
  set(TESSERA_WITH_NCCL ${_nccl_default} CACHE BOOL "Build the NCCL communicator")
endif()

# MPI: OpenMPI from Debian.
if(NOT DEFINED TESSERA_WITH_MPI)
  find_package(MPI COMPONENTS C QUIET)
  set(TESSERA_WITH_MPI ${MPI_C_FOUND} CACHE BOOL "Build the MPI communicator")
endif()
if(TESSERA_WITH_MPI)
  find_package(MPI COMPONENTS C REQUIRED)
endif()

# UCX: libucx-dev ships ucx.pc.
if(NOT DEFINED TESSERA_WITH_UCX)
  find_package(PkgConfig QUIET)
  set(_ucx_default OFF)
  if(PkgConfig_FOUND)
    pkg_check_modules(UCX QUIET ucx)
    if(UCX_FOUND)
      set(_ucx_default ON)
    endif()
  endif()
  set(TESSERA_WITH_UCX ${_ucx_default} CACHE BOOL "Build the UCX KV transport")
endif()

# Gloo: libgloo-dev ships GlooConfig.cmake (target `gloo`); CPU collectives over TCP for replicas
# whose ranks are processes started without mpirun (Kubernetes, plain processes).
if(NOT DEFINED TESSERA_WITH_GLOO)
  find_package(Gloo QUIET)
  set(TESSERA_WITH_GLOO ${Gloo_FOUND} CACHE BOOL "Build the Gloo communicator")
endif()
if(TESSERA_WITH_GLOO)
  find_package(Gloo REQUIRED)
endif()
