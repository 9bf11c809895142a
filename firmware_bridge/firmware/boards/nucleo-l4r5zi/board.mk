# nucleo-l4r5zi: NUCLEO-L4R5ZI (STM32L4R5ZI, Cortex-M4F at 120 MHz, 2 MB flash, 640 KB SRAM),
# CMSIS-NN kernels, the stm32l4r5 profile's arena RAM (640 KB * 0.75). Runs on the real board only;
# here it compiles and links (see README.md). Compiler flags, OPT and BOARD_DEFINES/INCLUDES are
# those of qemu-m4, so both link the same TFLM library; ST's headers reach our board sources only.
include $(BOARD_DIR)/../cortex-m/arm-gcc.mk
ARCH_FLAGS := $(CORTEX_M4F_FLAGS)
NUCLEO_SRCS := startup.cc board_nucleo.cc
BOARD_SRCS := $(NUCLEO_SRCS) $(CORTEX_M_SRCS)
LDSCRIPT := $(BOARD_DIR)/stm32l4r5zi.ld
PROFILE := stm32l4r5
ARENA_RAM_BYTES := 491520
# Two slots of 880 KB and two 4 KiB meta pages at the top of the 2 MB flash; the firmware gets the
# 280 KB below them (the link fails if it grows past that). The profile's flash budget (1.5 MB)
# does not fit twice beside the firmware.
SLOT_BYTES := 901120
MAX_PAYLOAD := 1024
WINDOW := 4
BOARD_LDFLAGS := -nostartfiles -Wl,--defsym=LEPTON_SLOT_BYTES=$(SLOT_BYTES)

# ST's CMSIS device headers (cmsis_device_l4 v1.7.4), unpacked at build time into a cache directory
# (never into this repository, nor into the TFLM tree, whose identity keys the library cache).
THIRD_PARTY_DIR ?= $(abspath $(BOARD_DIR)/../../../../../shared/third_party)
ST_ARCHIVE := $(THIRD_PARTY_DIR)/cmsis-device-l4-v1.7.4.tar.gz
ST_DEVICE_DIR ?= $(HOME)/.cache/lepton-edge/third_party/cmsis_device_l4-v1.7.4
ST_HEADER := $(ST_DEVICE_DIR)/Include/stm32l4r5xx.h
NUCLEO_OBJS := $(NUCLEO_SRCS:%.cc=$(BUILD_DIR)/obj/boards/nucleo-l4r5zi/%.o)
$(NUCLEO_OBJS): FW_CXXFLAGS += -DSTM32L4R5xx -I$(ST_DEVICE_DIR)/Include
$(NUCLEO_OBJS): | $(ST_HEADER)

.DEFAULT_GOAL := all
$(ST_HEADER):
	@test -f $(ST_ARCHIVE) || { echo "missing $(ST_ARCHIVE) (set THIRD_PARTY_DIR or ST_DEVICE_DIR)"; exit 1; }
	rm -rf $(ST_DEVICE_DIR).tmp && mkdir -p $(ST_DEVICE_DIR).tmp
	tar xzf $(ST_ARCHIVE) -C $(ST_DEVICE_DIR).tmp --strip-components=1
	rm -rf $(ST_DEVICE_DIR) && mv $(ST_DEVICE_DIR).tmp $(ST_DEVICE_DIR)
