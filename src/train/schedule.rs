//! Learning-rate schedules as a factor of each group's base rate, a function of the number t
//! of optimizer steps taken so far (the rate used by step t+1):
//!
//! - warm-up (t < W): s + (1 - s) t / W, as torch's LinearLR(start_factor=s, total_iters=W);
//! - then, with u = t - W:
//!   - "constant": 1;
//!   - "cosine": m + (1 - m)(1 + cos(pi u / (T - W))) / 2 for u <= T - W, m after, as
//!     CosineAnnealingLR(T_max=T-W, eta_min=m*lr) chained after the warm-up by SequentialLR;
//!   - "step": gamma^floor(u / step_size), as StepLR.

use super::optim::{OptimizerConfig, ScheduleName};
use crate::bail;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    Constant,
    Cosine { total_steps: i64, min_factor: f64 },
    Step { step_size: i64, gamma: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub warmup_steps: i64,
    pub warmup_start_factor: f64,
    pub decay: Decay,
}

impl Schedule {
    /// The schedule of `config`; unknown names and inconsistent lengths are ConfigErrors.
    pub fn from_config(config: &OptimizerConfig) -> Result<Self> {
        if config.warmup_steps < 0 {
            bail!(Config, "warmup_steps must be >= 0, got {}", config.warmup_steps);
        }
        let s = config.warmup_start_factor;
        if config.warmup_steps > 0 && !(s > 0.0 && s <= 1.0) {
            bail!(Config, "warmup_start_factor must lie in (0, 1], got {s}");
        }
        let decay = match config.schedule {
            ScheduleName::Constant => Decay::Constant,
            ScheduleName::Cosine => {
                let Some(total_steps) = config.total_steps else {
                    bail!(Config, "total_steps must be set for the cosine schedule");
                };
                if total_steps <= config.warmup_steps {
                    bail!(
                        Config,
                        "total_steps ({total_steps}) must exceed warmup_steps ({})",
                        config.warmup_steps
                    );
                }
                let m = config.min_lr_factor;
                if !(0.0..=1.0).contains(&m) {
                    bail!(Config, "min_lr_factor must lie in [0, 1], got {m}");
                }
                Decay::Cosine { total_steps, min_factor: m }
            }
            ScheduleName::Step => {
                if config.step_size < 1 {
                    bail!(Config, "step_size must be >= 1, got {}", config.step_size);
                }
                if !(config.gamma.is_finite() && config.gamma > 0.0) {
                    bail!(Config, "gamma must be a positive number, got {}", config.gamma);
                }
                Decay::Step { step_size: config.step_size, gamma: config.gamma }
            }
        };
        Ok(Schedule { warmup_steps: config.warmup_steps, warmup_start_factor: s, decay })
    }

    /// The learning-rate factor after `t` optimizer steps.
    pub fn factor(&self, t: i64) -> f64 {
        let w = self.warmup_steps;
        if t < w {
            let s = self.warmup_start_factor;
            return s + (1.0 - s) * t as f64 / w as f64;
        }
        let u = t - w;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine { total_steps, min_factor } => {
                let span = (total_steps - w) as f64;
                let u = (u as f64).min(span);
                min_factor
                    + (1.0 - min_factor) * (1.0 + (std::f64::consts::PI * u / span).cos()) / 2.0
            }
            Decay::Step { step_size, gamma } => gamma.powi((u / step_size) as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: &str) -> OptimizerConfig {
        OptimizerConfig {
            schedule: schedule.parse().unwrap(),
            warmup_steps: 4,
            warmup_start_factor: 0.2,
            total_steps: Some(14),
            step_size: 3,
            gamma: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn warmup_then_cosine_and_step() {
        let cos = Schedule::from_config(&config("cosine")).unwrap();
        assert!((cos.factor(0) - 0.2).abs() < 1e-12);
        assert!((cos.factor(2) - 0.6).abs() < 1e-12);
        assert!((cos.factor(4) - 1.0).abs() < 1e-12);
        assert!((cos.factor(9) - 0.5).abs() < 1e-12);
        assert!(cos.factor(14).abs() < 1e-12);
        assert!(cos.factor(20).abs() < 1e-12);
        let step = Schedule::from_config(&config("step")).unwrap();
        assert_eq!(step.factor(6), 1.0);
        assert_eq!(step.factor(7), 0.5);
        assert_eq!(step.factor(13), 0.125);
    }

    #[test]
    fn bad_schedules_are_config_errors() {
        assert!("linear".parse::<ScheduleName>().unwrap_err().to_string().contains("cosine"));
        let mut c = config("cosine");
        c.total_steps = None;
        assert!(Schedule::from_config(&c).is_err());
        c.total_steps = Some(3);
        assert!(Schedule::from_config(&c).is_err());
    }
}
