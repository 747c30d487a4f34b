//! Random fault injection: a seeded draw per request, so a faulty run is reproducible.

use super::config::FaultKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// Draws faults with probability `rate`, the kind uniformly from `kinds`.
pub(crate) struct FaultInjector {
    rate: f64,
    kinds: Vec<FaultKind>,
    rng: Mutex<StdRng>,
}

impl FaultInjector {
    pub(crate) fn new(rate: f64, kinds: Vec<FaultKind>, seed: u64) -> Self {
        FaultInjector {
            rate,
            kinds,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// The fault to inject into this request, if any.
    pub(crate) fn draw(&self) -> Option<FaultKind> {
        // Skip the lock entirely on the common, fault-free configuration.
        if self.rate <= 0.0 || self.kinds.is_empty() {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if !rng.random_bool(self.rate) {
            return None;
        }
        Some(self.kinds[rng.random_range(0..self.kinds.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_bounds_and_seed_determinism() {
        assert_eq!(
            FaultInjector::new(0.0, FaultKind::ALL.to_vec(), 1).draw(),
            None
        );
        let always = FaultInjector::new(1.0, vec![FaultKind::Cut], 1);
        assert_eq!(always.draw(), Some(FaultKind::Cut));
        let a = FaultInjector::new(0.5, FaultKind::ALL.to_vec(), 7);
        let b = FaultInjector::new(0.5, FaultKind::ALL.to_vec(), 7);
        let xs: Vec<_> = (0..64).map(|_| a.draw()).collect();
        let ys: Vec<_> = (0..64).map(|_| b.draw()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(Option::is_some) && xs.iter().any(Option::is_none));
    }
}
