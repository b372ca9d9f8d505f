# Script mode: writes OUT with the git-described version; rewrites only on change.
execute_process(COMMAND git -C ${SOURCE_DIR} describe --tags --always --dirty
                OUTPUT_VARIABLE describe OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT describe)
  set(describe "${FALLBACK}-unknown")
elseif(NOT describe MATCHES "^v?[0-9]")
  # No tag yet: describe printed a bare hash.
  set(describe "${FALLBACK}-g${describe}")
endif()
set(content "#pragma once\n// Generated at build time from `git describe`.\n#define CAIRN_VERSION \"${describe}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${content}")
  file(WRITE ${OUT} "${content}")
endif()
