# Wire framing of the coordinator protocol (included from coordinator/CMakeLists.txt).
cairn_cc_library(NAME coord_frame SRCS frame.cc HDRS frame.h DEPS cairn::common cairn::proto)
cairn_cc_test(NAME coord_frame_test SRCS frame_test.cc DEPS cairn::coord_frame)
