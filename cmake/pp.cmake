# One helper per target kind, in the manner of absl_cc_library: each folder
# declares its library, its binaries and its tests in a few lines.
#
#   pp_library(NAME pp_common SRCS a.cc b.cc DEPS nlohmann_json::nlohmann_json)
#   pp_test(NAME common_test SRCS x_test.cc DEPS pp_common)

function(pp_library)
  cmake_parse_arguments(PP "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(${PP_NAME} STATIC ${PP_SRCS})
  target_include_directories(${PP_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${PP_NAME} PUBLIC ${PP_DEPS})
endfunction()

function(pp_binary)
  cmake_parse_arguments(PP "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${PP_NAME} ${PP_SRCS})
  target_link_libraries(${PP_NAME} PRIVATE ${PP_DEPS})
  if(TARGET PkgConfig::JEMALLOC)  # the allocator: see the top CMakeLists.txt
    target_link_libraries(${PP_NAME} PRIVATE PkgConfig::JEMALLOC)
  endif()
endfunction()

# LABELS lets CI pick subsets (ctest -L pg); FIXTURES names services the test
# needs (for instance "postgres"), started once by a ctest fixture.
function(pp_test)
  cmake_parse_arguments(PP "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS;FIXTURES" ${ARGN})
  add_executable(${PP_NAME} ${PP_SRCS})
  target_link_libraries(${PP_NAME} PRIVATE ${PP_DEPS} pp_test_support GTest::gtest_main)
  if(NOT PP_TIMEOUT)
    set(PP_TIMEOUT 300)
  endif()
  add_test(NAME ${PP_NAME} COMMAND ${PP_NAME})
  set_tests_properties(${PP_NAME} PROPERTIES TIMEOUT ${PP_TIMEOUT}
    LABELS "${PP_LABELS}"
    ENVIRONMENT "PP_BIN_DIR=${PROJECT_BINARY_DIR}/bin;PP_TEST_STATE=${PROJECT_BINARY_DIR}/test-state;PP_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(PP_FIXTURES)
    set_tests_properties(${PP_NAME} PROPERTIES FIXTURES_REQUIRED "${PP_FIXTURES}")
  endif()
endfunction()

# s2geometry pulls in Abseil, whose InlinedVector trips GCC 12's
# -Wmaybe-uninitialized at -O2 even from system headers. Keep every other
# warning an error for targets that use s2.
function(pp_exempt_abseil_warning target)
  target_compile_options(${target} PRIVATE -Wno-error=maybe-uninitialized)
endfunction()
