//! Inference without a graph. candle records every op on a [`Var`] for backward, and each recorded tensor keeps
//! its inputs alive, so a plain forward pass holds every activation of every layer until its output is dropped:
//! evaluation then needs as much memory as training and page-faults all of it in afresh for each batch.
//! [`no_grad`] makes the model read its parameters as detached tensors (same storage, no copy), so intermediates
//! are freed as soon as the next op has consumed them.

use std::cell::Cell;

use candle_core::{Tensor, Var};

thread_local! {
    static NO_GRAD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with gradient recording off for this thread's model forward passes (nesting allowed).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|c| c.replace(true)));
    f()
}

/// Whether [`no_grad`] is active on this thread.
pub fn grad_enabled() -> bool {
    !NO_GRAD.with(|c| c.get())
}

/// A parameter as the forward pass uses it: the variable itself, or under [`no_grad`] a detached view of it.
pub(crate) fn param(v: &Var) -> Tensor {
    if grad_enabled() {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn no_grad_detaches_parameters_and_restores_on_exit() {
        let v = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert!(param(&v).track_op());
        let inner = no_grad(|| {
            let nested = no_grad(|| param(&v).track_op());
            (param(&v).track_op(), nested, grad_enabled())
        });
        assert_eq!(inner, (false, false, false));
        assert!(grad_enabled() && param(&v).track_op());
    }
}
