# fdio's functions are C entry points for kernels (fdio.pxd); Python sees only its constants.
FP_FD_SCRATCH: int
FP_FD_MAX_BURST: int
