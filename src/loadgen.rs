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
    /// How the orders spread over workers, cities and time.
    pub shape: Shape,
}

/// How a generated file's orders spread over workers, cities and time. Either way each
/// order picks its worker at random and the file holds `workers` workers, then
/// `orders` orders, over 28 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// As a platform takes them: each worker works in one city, and orders come in
    /// the order they were accepted, with ids in that order (a day's file, or orders
    /// reported as they happen). What a platform sends.
    #[default]
    AsTaken,
    /// Each order at a random moment of the 28 days, in a random city, in no order:
    /// nearly every order is a new daily enrolment (a worker in 13 cities a day), and
    /// the rows it changes are spread over every day stored. The worst case for the
    /// store; the shape of the files issue 13's first figures were measured on.
    Scattered,
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

/// Milliseconds the orders of a generated file spread over: 28 days.
const SPAN_MS: u64 = 28 * 86_400_000;

/// The `o`-th of `orders` equal parts of the span, as `[start, end)` in milliseconds
/// from its first day's midnight: where an order as taken falls. Computed in u128
/// (`o * SPAN_MS` exceeds u64 for a few billion orders); a part shorter than a
/// millisecond is empty (`start == end`), and its order takes `start`.
fn part(o: u64, orders: u64) -> (u64, u64) {
    let at = |o: u64| (u128::from(o) * u128::from(SPAN_MS) / u128::from(orders.max(1))) as u64;
    (at(o), at(o + 1))
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
        let accepted = day0
            + match spec.shape {
                Shape::AsTaken => {
                    let (start, end) = part(o as u64, spec.orders as u64);
                    start + rng.below(end - start)
                }
                Shape::Scattered => rng.below(SPAN_MS),
            } as i64;
        let completed = accepted + 600_000 + rng.below(3_000_000) as i64;
        let status = if rng.below(20) == 0 {
            "CANCELLED"
        } else {
            "COMPLETED"
        };
        let city = match spec.shape {
            Shape::AsTaken => CITIES[w % CITIES.len()],
            Shape::Scattered => CITIES[rng.below(CITIES.len() as u64) as usize],
        };
        // As taken, ids grow with time as text too (zero-padded), as a platform's order
        // numbers do; scattered keeps the ids the first files had.
        let id = match spec.shape {
            Shape::AsTaken => format!("{p}O{o:010}"),
            Shape::Scattered => format!("{p}O{o}"),
        };
        writeln!(
            out,
            r#"{{"kind":"order","order_id":"{id}","worker_id":"{p}W{w}","industry":"{industry}","division_code":"{city}","accepted_at":{accepted},"completed_at":{completed},"status":"{status}"}}"#,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(shape: Shape) -> Vec<serde_json::Value> {
        let spec = LoadSpec {
            workers: 50,
            orders: 2000,
            start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
            id_prefix: "T".into(),
            seed: 3,
            shape,
        };
        let mut out = Vec::new();
        write(&spec, &mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2050);
        lines.into_iter().skip(50).collect()
    }

    fn field<'a>(o: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        o.get(name).expect(name)
    }

    fn accepted(orders: &[serde_json::Value]) -> Vec<i64> {
        orders
            .iter()
            .map(|o| field(o, "accepted_at").as_i64().expect("millis"))
            .collect()
    }

    #[test]
    fn as_taken_orders_come_in_time_order_with_one_city_per_worker() {
        let orders = orders(Shape::AsTaken);
        let accepted = accepted(&orders);
        assert!(accepted.windows(2).all(|w| w[0] <= w[1]), "in time order");
        let span = accepted[accepted.len() - 1] - accepted[0];
        assert!(span > 27 * 86_400_000, "spread over the 28 days: {span}");
        let mut cities: std::collections::HashMap<&str, &str> = Default::default();
        for o in &orders {
            let w = field(o, "worker_id").as_str().expect("worker");
            let c = field(o, "division_code").as_str().expect("city");
            assert_eq!(*cities.entry(w).or_insert(c), c, "{w} works in one city");
        }
        let ids: Vec<&str> = orders
            .iter()
            .map(|o| field(o, "order_id").as_str().expect("id"))
            .collect();
        assert_eq!(ids[0], "TO0000000000");
        assert_eq!(ids[1999], "TO0000001999");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow as text");
    }

    #[test]
    fn more_orders_than_milliseconds_still_spread_over_the_whole_span() {
        for orders in [
            1,
            3,
            2_419_200_000,
            2_419_200_001,
            3_000_000_000,
            u64::MAX / 2,
        ] {
            assert_eq!(part(0, orders).0, 0);
            let (start, end) = part(orders - 1, orders);
            assert_eq!(end, SPAN_MS, "{orders}");
            assert!(
                start <= end && start >= SPAN_MS - SPAN_MS.div_ceil(orders),
                "{orders}"
            );
            if orders > 1000 {
                let middle = part(orders / 2, orders).0;
                assert!(middle.abs_diff(SPAN_MS / 2) <= 1, "{orders}: {middle}");
            }
        }
    }

    #[test]
    fn scattered_orders_are_in_no_time_order_and_workers_in_many_cities() {
        let orders = orders(Shape::Scattered);
        let accepted = accepted(&orders);
        assert!(accepted.windows(2).any(|w| w[0] > w[1]));
        let mut cities: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
            Default::default();
        for o in &orders {
            cities
                .entry(field(o, "worker_id").as_str().expect("worker"))
                .or_default()
                .insert(field(o, "division_code").as_str().expect("city"));
        }
        assert!(cities.values().any(|c| c.len() > 1));
    }
}
