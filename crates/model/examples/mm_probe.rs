use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    escale_model::set_threads(Some(2));
    for (m, k, n) in [(1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576), (1024, 576, 192), (576, 1024, 1536), (1536, 1024, 576), (85, 576, 49152), (682, 576, 49152)] {
        let a = Tensor::randn(0f32, 1., (m, k), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1., (k, n), &Device::Cpu).unwrap();
        let bt = Tensor::randn(0f32, 1., (n, k), &Device::Cpu).unwrap();
        let _ = a.matmul(&b).unwrap();
        let mut best = f64::MAX; let mut bestt = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now(); let _ = a.matmul(&b).unwrap(); best = best.min(t.elapsed().as_secs_f64());
            let t = Instant::now(); let _ = a.matmul(&bt.t().unwrap()).unwrap(); bestt = bestt.min(t.elapsed().as_secs_f64());
        }
        let f = 2.0 * (m * k * n) as f64;
        println!("{m} {k} {n} {:.1}  (b^T) {:.1}", f / best / 1e9, f / bestt / 1e9);
    }
}
