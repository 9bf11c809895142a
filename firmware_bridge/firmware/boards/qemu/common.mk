# What the MPS2 boards under QEMU share (board-m4.mk, board-m7.mk): the start-up, semihosting and
# UART code, a 4 KiB frame size with 8 frames in flight (QEMU's pty applies back-pressure).
include $(BOARD_DIR)/../cortex-m/arm-gcc.mk
BOARD_SRCS := startup.cc semihost.cc board_qemu.cc $(CORTEX_M_SRCS)
BOARD_LDFLAGS := -L$(BOARD_DIR) -nostartfiles
MAX_PAYLOAD := 4096
WINDOW := 8
