"""Edge deployment pipeline on Apache TVM: import, quantize, tune, build, package, verify."""
