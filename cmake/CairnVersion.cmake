# CAIRN_VERSION_STRING from `git describe` at configure time, re-read on every build
# through a small generated header so that the binaries report the commit they were
# built from.
set(CAIRN_VERSION_HEADER ${PROJECT_BINARY_DIR}/generated/cairn/version.h)
add_custom_target(cairn_version_header
  COMMAND ${CMAKE_COMMAND}
          -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
          -DOUT=${CAIRN_VERSION_HEADER}
          -DFALLBACK=${PROJECT_VERSION}
          -P ${PROJECT_SOURCE_DIR}/cmake/WriteVersion.cmake
  BYPRODUCTS ${CAIRN_VERSION_HEADER}
  COMMENT "cairn version header")
execute_process(COMMAND git -C ${PROJECT_SOURCE_DIR} describe --tags --always --dirty
                OUTPUT_VARIABLE CAIRN_VERSION_STRING OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET)
if(NOT CAIRN_VERSION_STRING)
  set(CAIRN_VERSION_STRING ${PROJECT_VERSION})
endif()
