//! The `metric_tables!` macro, which turns the gateway's metric tables (in
//! `lib.rs`) into the [`Metrics`](crate::Metrics) struct, its construction
//! and registration, and [`Metrics::TABLE`](crate::Metrics::TABLE); and
//! [`MetricInfo`], one row of that table.

use crate::filter_metrics::Kind;

/// The prefix of every metric the gateway exports (`wasmgate_…`).
pub const PREFIX: &str = "wasmgate";

/// One metric the gateway exports, as declared in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricInfo {
    /// The family's name in the exposition, e.g. `wasmgate_requests`.
    /// Counters' samples add `_total`; histograms' add `_bucket`, `_sum` and
    /// `_count`.
    pub name: &'static str,
    /// The name without the `wasmgate_` prefix, as registered: `requests`.
    pub unprefixed: &'static str,
    /// Counter, gauge or histogram (with labels or not).
    pub kind: Kind,
    /// The help text, without a final `.` (registering adds one, so the
    /// exposition of the metrics in [`Metrics::TABLE`](crate::Metrics::TABLE)
    /// has it).
    pub help: &'static str,
    /// The table it is declared in: `listener`, `filters`, `upstream`, ...
    pub subsystem: &'static str,
}

impl MetricInfo {
    /// The names of this metric's samples, e.g. `wasmgate_requests_total`.
    pub fn samples(&self) -> Vec<String> {
        let suffixes: &[&str] = match self.kind {
            Kind::Counter => &["_total"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["_bucket", "_sum", "_count"],
        };
        suffixes
            .iter()
            .map(|s| format!("{}{s}", self.name))
            .collect()
    }
}

/// Declares the gateway's metrics, each once, in one table per subsystem:
///
/// ```text
/// metric_tables! {
///     /// Docs of the struct.
///     pub struct Metrics;
///
///     subsystem {
///         /// Optional notes, added to the field's docs.
///         field: kind[Labels](buckets) => "name", "Help text";
///         ...
///     }
///     ...
/// }
/// ```
///
/// `kind` is `counter`, `seconds` (a counter of float seconds, with labels),
/// `gauge` or `histogram`; `[Labels]` (optional) makes
/// the field a `Family` keyed by that label set; `(buckets)` (histograms
/// only, required) is an expression giving the bucket bounds. The field's
/// type follows: `Counter`, `Gauge`, `Histogram`, `Family<Labels, Counter>`,
/// `Family<Labels, Counter<f64, AtomicU64>>`, `Family<Labels, Gauge>` or
/// `Family<Labels, Histogram, fn() -> Histogram>`.
/// `name` is exported as `wasmgate_<name>`.
///
/// Generates the struct (a private `registry` and one public field per row,
/// documented with its exported name and help), `registered_in` (creates
/// every metric and registers it in table order, which is the order of the
/// exposition), `TABLE` (a [`MetricInfo`] per row, in the same order) and,
/// for the unit tests, `touch_all` (one sample in every metric).
macro_rules! metric_tables {
    (
        $(#[$struct_attr:meta])*
        $vis:vis struct $name:ident;
        $(
            $subsystem:ident {
                $(
                    $(#[$attr:meta])*
                    $field:ident : $kind:ident $([$labels:ty])? $(($buckets:expr))?
                        => $exported:literal, $help:literal;
                )*
            }
        )*
    ) => {
        $(#[$struct_attr])*
        #[derive(Debug)]
        $vis struct $name {
            registry: ::prometheus_client::registry::Registry,
            $($(
                #[doc = concat!("`wasmgate_", $exported, "`: ", $help, ".")]
                $(#[$attr])*
                pub $field: metric_tables!(@type $kind $([$labels])?),
            )*)*
        }

        impl $name {
            /// Every metric, in the order it is registered and exported.
            pub const TABLE: &'static [$crate::MetricInfo] = &[$($(
                $crate::MetricInfo {
                    name: concat!("wasmgate_", $exported),
                    unprefixed: $exported,
                    kind: metric_tables!(@kind $kind),
                    help: $help,
                    subsystem: stringify!($subsystem),
                },
            )*)*];

            /// Creates every metric and registers it with `registry`, in
            /// table order.
            fn registered_in(mut registry: ::prometheus_client::registry::Registry) -> Self {
                $($(
                    let $field: metric_tables!(@type $kind $([$labels])?) =
                        metric_tables!(@new $kind $([$labels])? $(($buckets))?);
                    registry.register($exported, $help, $field.clone());
                )*)*
                $name {
                    registry,
                    $($($field,)*)*
                }
            }

            /// Records one sample in every metric (a family with no series
            /// is not exported).
            #[cfg(test)]
            fn touch_all(&self) {
                $($(
                    $crate::table::Touch::touch(&self.$field);
                )*)*
            }
        }
    };

    (@type counter) => { ::prometheus_client::metrics::counter::Counter };
    (@type gauge) => { ::prometheus_client::metrics::gauge::Gauge };
    (@type histogram) => { ::prometheus_client::metrics::histogram::Histogram };
    (@type counter [$labels:ty]) => {
        ::prometheus_client::metrics::family::Family<
            $labels,
            ::prometheus_client::metrics::counter::Counter,
        >
    };
    (@type seconds [$labels:ty]) => {
        ::prometheus_client::metrics::family::Family<
            $labels,
            ::prometheus_client::metrics::counter::Counter<f64, ::std::sync::atomic::AtomicU64>,
        >
    };
    (@type gauge [$labels:ty]) => {
        ::prometheus_client::metrics::family::Family<
            $labels,
            ::prometheus_client::metrics::gauge::Gauge,
        >
    };
    (@type histogram [$labels:ty]) => {
        ::prometheus_client::metrics::family::Family<
            $labels,
            ::prometheus_client::metrics::histogram::Histogram,
            fn() -> ::prometheus_client::metrics::histogram::Histogram,
        >
    };

    (@new histogram $([$labels:ty])?) => {
        compile_error!("a histogram needs its buckets: `histogram[Labels](buckets)`")
    };
    (@new histogram ($buckets:expr)) => {
        ::prometheus_client::metrics::histogram::Histogram::new($buckets)
    };
    (@new histogram [$labels:ty] ($buckets:expr)) => {
        ::prometheus_client::metrics::family::Family::new_with_constructor(|| {
            ::prometheus_client::metrics::histogram::Histogram::new($buckets)
        })
    };
    (@new $kind:ident $([$labels:ty])? ($buckets:expr)) => {
        compile_error!("only histograms have buckets")
    };
    (@new $kind:ident $([$labels:ty])?) => {
        ::core::default::Default::default()
    };

    (@kind counter) => { $crate::filter_metrics::Kind::Counter };
    (@kind seconds) => { $crate::filter_metrics::Kind::Counter };
    (@kind gauge) => { $crate::filter_metrics::Kind::Gauge };
    (@kind histogram) => { $crate::filter_metrics::Kind::Histogram };
    (@kind $other:ident) => {
        compile_error!(concat!(
            "unknown metric kind `",
            stringify!($other),
            "`: counter, seconds (a counter of float seconds), gauge or histogram"
        ))
    };
}

/// Records one sample in a metric, so that it is exported (tests only).
#[cfg(test)]
pub(crate) trait Touch {
    fn touch(&self);
}

#[cfg(test)]
mod touch {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::{Family, MetricConstructor};
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;

    use super::Touch;

    impl Touch for Counter {
        fn touch(&self) {
            self.inc();
        }
    }

    impl Touch for Counter<f64, std::sync::atomic::AtomicU64> {
        fn touch(&self) {
            self.inc_by(0.5);
        }
    }

    impl Touch for Gauge {
        fn touch(&self) {
            self.set(1);
        }
    }

    impl Touch for Histogram {
        fn touch(&self) {
            self.observe(0.001);
        }
    }

    /// One series, with the label set's default values.
    impl<L, M, C> Touch for Family<L, M, C>
    where
        L: Clone + std::hash::Hash + Eq + Default + EncodeLabelSet,
        M: Touch,
        C: MetricConstructor<M>,
    {
        fn touch(&self) {
            self.get_or_create(&L::default()).touch();
        }
    }
}
