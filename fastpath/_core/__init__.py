"""The compiled core. Private: reached only through fastpath.hv, fastpath.vring and kernels."""
