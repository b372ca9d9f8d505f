# Every dependency comes from a Debian 12 package installed by scripts/setup.
include_guard(GLOBAL)
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(OpenSSL 3 REQUIRED)
find_package(Protobuf REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(SQLite3 REQUIRED)
find_package(Boost 1.74 REQUIRED)
if(CAIRN_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(CAIRN_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# HDF5 as one imported target (Debian's serial flavour).
if(NOT TARGET cairn_hdf5)
  add_library(cairn_hdf5 INTERFACE)
  target_include_directories(cairn_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
  target_link_libraries(cairn_hdf5 INTERFACE ${HDF5_C_LIBRARIES} ${HDF5_LIBRARIES})
  target_compile_definitions(cairn_hdf5 INTERFACE ${HDF5_DEFINITIONS} H5_USE_110_API)
endif()

# Open MPI (collectives, the reference job), OpenBLAS and zlib (the reference job).
find_package(MPI REQUIRED COMPONENTS C)
find_package(BLAS REQUIRED)
find_package(ZLIB REQUIRED)
find_path(CAIRN_CBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas REQUIRED)
# Launch prefix for tests that run under mpirun: root is allowed (CI runs as root), more
# ranks than cores are allowed, and ranks talk over shared memory.
set(CAIRN_MPIEXEC ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe --bind-to none
    --mca btl self,vader)
