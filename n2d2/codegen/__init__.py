"""`n2d2.codegen`: backends that run IR programs (numpy executor now; C and CUDA to come)."""
