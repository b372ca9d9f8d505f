# Helpers every folder's CMakeLists.txt uses:
#   cairn_cc_library(NAME x SRCS ... [HDRS ...] [DEPS ...] [PRIVATE_DEPS ...])
#       -> target cairn_x with alias cairn::x
#   cairn_cc_binary(NAME x SRCS ... [DEPS ...] [OUTPUT_NAME name])
#   cairn_cc_test(NAME x SRCS ... [DEPS ...] [LABELS unit|integration|slow|gpu] [TIMEOUT s])
include_guard(GLOBAL)

function(cairn_apply_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>)
  if(CAIRN_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(CAIRN_SANITIZE)
    string(REPLACE ";" "," san "${CAIRN_SANITIZE}")
    target_compile_options(${target} PRIVATE -fsanitize=${san} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${san})
  endif()
endfunction()

function(cairn_cc_library)
  cmake_parse_arguments(A "" "NAME" "SRCS;HDRS;DEPS;PRIVATE_DEPS" ${ARGN})
  set(t cairn_${A_NAME})
  add_library(${t} STATIC ${A_SRCS} ${A_HDRS})
  add_library(cairn::${A_NAME} ALIAS ${t})
  target_include_directories(${t} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
  target_link_libraries(${t} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  cairn_apply_flags(${t})
endfunction()

function(cairn_cc_binary)
  cmake_parse_arguments(A "" "NAME;OUTPUT_NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS})
  if(A_OUTPUT_NAME)
    set_target_properties(${A_NAME} PROPERTIES OUTPUT_NAME ${A_OUTPUT_NAME})
  endif()
  cairn_apply_flags(${A_NAME})
endfunction()

function(cairn_cc_test)
  if(NOT CAIRN_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  cairn_apply_flags(${A_NAME})
  add_test(NAME ${A_NAME} COMMAND ${A_NAME} WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
  set_tests_properties(${A_NAME} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
    ENVIRONMENT "CAIRN_BIN_DIR=${PROJECT_BINARY_DIR}/bin;CAIRN_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

# cairn_mpi_test(NAME x SRCS ... [DEPS ...] RANKS 1 2 4 [LABELS ...] [TIMEOUT s])
#   One GoogleTest executable (its main() starts MPI), registered once per rank count as
#   x_np<N>, run with mpirun.
function(cairn_mpi_test)
  if(NOT CAIRN_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;RANKS" ${ARGN})
  if(NOT A_LABELS)
    set(A_LABELS integration)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  add_executable(${A_NAME} ${A_SRCS})
  target_link_libraries(${A_NAME} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock)
  set_target_properties(${A_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  cairn_apply_flags(${A_NAME})
  foreach(n ${A_RANKS})
    add_test(NAME ${A_NAME}_np${n}
      COMMAND ${CAIRN_MPIEXEC} -np ${n} $<TARGET_FILE:${A_NAME}>
      WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
    set_tests_properties(${A_NAME}_np${n} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
      PROCESSORS ${n}
      ENVIRONMENT "CAIRN_BIN_DIR=${PROJECT_BINARY_DIR}/bin;CAIRN_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  endforeach()
endfunction()

# cairn_cuda_library(NAME x SRCS ... [DEPS ...]): CUDA sources compiled as C++20 behind
# a narrow (plain-types) header; target cairn_x with alias cairn::x.
# MODULE: a plugin loaded with dlopen (into lib/), only its exported symbols visible.
function(cairn_cuda_library)
  cmake_parse_arguments(A "MODULE" "NAME" "SRCS;DEPS" ${ARGN})
  set(t cairn_${A_NAME})
  if(A_MODULE)
    add_library(${t} MODULE ${A_SRCS})
    set_target_properties(${t} PROPERTIES CXX_VISIBILITY_PRESET hidden
      CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  else()
    add_library(${t} STATIC ${A_SRCS})
    add_library(cairn::${A_NAME} ALIAS ${t})
  endif()
  target_include_directories(${t} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${t} PUBLIC ${A_DEPS})
  target_compile_options(${t} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
  set_target_properties(${t} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF
    CUDA_ARCHITECTURES "${CAIRN_CUDA_ARCHITECTURES}")
endfunction()
