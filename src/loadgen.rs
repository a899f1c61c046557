//! Synthetic bulk files for benchmarks and demos: valid workers (generated resident ID
//! numbers with correct check characters) and their orders, deterministic per seed.

use std::io::Write;

use crate::domain::ids::resident_id_check_char;

/// Shape of a generated file.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub workers: usize,
    pub orders: usize,
    /// First local day of orders (orders spread over the following 28 days).
    pub start: chrono::NaiveDate,
    pub id_prefix: String,
    pub seed: u64,
}

/// A small, fast, deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const CITIES: [&str; 13] = [
    "320100", "320200", "320300", "320400", "320500", "320600", "320700", "320800", "320900",
    "321000", "321100", "321200", "321300",
];
const INDUSTRIES: [&str; 3] = ["RIDE_HAILING", "INSTANT_DELIVERY", "INTRACITY_FREIGHT"];

/// A valid, deterministic resident ID number (GB 11643-1999, check character
/// computed) for the `n`-th generated worker of `seed`.
pub fn resident_id_of(seed: u64, n: u64) -> String {
    resident_id(&mut Rng(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

fn resident_id(rng: &mut Rng) -> String {
    let year = 1965 + rng.below(40);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let first17 = format!("320102{year:04}{month:02}{day:02}{:03}", rng.below(1000));
    let check = resident_id_check_char(&first17).unwrap_or('0');
    format!("{first17}{check}")
}

/// Writes `spec.workers` worker lines, then `spec.orders` order lines.
pub fn write(spec: &LoadSpec, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = Rng(spec.seed);
    let p = &spec.id_prefix;
    for w in 0..spec.workers {
        let industry = INDUSTRIES[w % INDUSTRIES.len()];
        writeln!(
            out,
            r#"{{"kind":"worker","worker_id":"{p}W{w}","id_number":"{}","name":"测试{w}","mobile":"13{:09}","industries":["{industry}"],"registered_at":"2025-06-01T08:00:00+08:00","status":"ACTIVE"}}"#,
            resident_id(&mut rng),
            rng.below(1_000_000_000),
        )?;
    }
    let day0 = crate::domain::time::local_midnight(spec.start);
    for o in 0..spec.orders {
        let w = rng.below(spec.workers as u64) as usize;
        let industry = INDUSTRIES[w % INDUSTRIES.len()];
        let accepted = day0 + rng.below(28 * 86_400_000) as i64;
        let completed = accepted + 600_000 + rng.below(3_000_000) as i64;
        let status = if rng.below(20) == 0 {
            "CANCELLED"
        } else {
            "COMPLETED"
        };
        writeln!(
            out,
            r#"{{"kind":"order","order_id":"{p}O{o}","worker_id":"{p}W{w}","industry":"{industry}","division_code":"{}","accepted_at":{accepted},"completed_at":{completed},"status":"{status}"}}"#,
            CITIES[rng.below(CITIES.len() as u64) as usize],
        )?;
    }
    Ok(())
}
