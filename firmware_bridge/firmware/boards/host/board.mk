# host: the core on Linux, on a pseudo-terminal, storage in a file, TFLM reference kernels,
# under AddressSanitizer and UBSan. Plays the stm32l4r5 profile (its arena RAM and flash budget).
CC := gcc
CXX := g++
AR := ar
SIZE := size
ARCH_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
OPT := -O1
KERNELS := reference
BOARD_SRCS := board_host.cc
LDSCRIPT :=
PROFILE := stm32l4r5
ARENA_RAM_BYTES := 491520
SLOT_BYTES := 1572864
MAX_PAYLOAD := 4096
WINDOW := 8
EXE := firmware
BOARD_LIBS := -lutil
# x86-64 TFLite Micro may need more arena than a figure measured on the 32-bit target: as the Python
# simulator, give it the manifest's host figure behind the device's 491,520 B (see core/device.cc).
CORE_DEFINES := -DLEPTON_HOST_ARENA_FROM_MANIFEST -DLEPTON_ARENA_STATIC_BYTES=983040u
