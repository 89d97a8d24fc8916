# cmake -DCOMMAND="prog;arg;..." -DEXPECT="regex" -P expect_failure.cmake
# Passes when the command exits non-zero and its output matches EXPECT: a clear error, not a
# crash and not a silent success.
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
if (result EQUAL 0)
    message(FATAL_ERROR "expected failure, got exit 0:\n${out}${err}")
endif ()
if (NOT "${out}${err}" MATCHES "${EXPECT}")
    message(FATAL_ERROR "exit ${result}, but output does not match '${EXPECT}':\n${out}${err}")
endif ()
message(STATUS "failed as expected (exit ${result}): ${err}")
