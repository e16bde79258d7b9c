"""Model profiling: parameters, FLOPs including the selective scan, activation memory and speed."""
