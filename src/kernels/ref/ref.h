// The scalar reference of every op: the source of truth the optimised kernels are tested against,
// and (instantiated for double) the path the finite-difference gradient checks run. Written for
// clarity, never for speed: plain loops, every sum accumulated in double whatever T is. Same
// signatures and semantics as kernels/ops.h (documented there).
#pragma once

#include "kernels/ref/activation.h"
#include "kernels/ref/adamw.h"
#include "kernels/ref/attention.h"
#include "kernels/ref/embedding.h"
#include "kernels/ref/linear.h"
#include "kernels/ref/loss.h"
#include "kernels/ref/norm.h"
#include "kernels/ref/rope.h"
