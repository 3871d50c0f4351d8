//! The filter flags of `observe` as `hubble observe` reads them: in
//! command-line order, each one into the whitelist, or into the blacklist
//! when `--not` comes right before it, and the FlowFilters built from each list.

use anyhow::{Context, bail};
use clap::{Arg, ArgAction, ArgMatches, error::ErrorKind};

use crate::filter;
use crate::flows;
use crate::printer;
use crate::proto::flow::{EventTypeFilter, FlowFilter, TrafficDirection, Verdict};

/// One filter flag with its value, e.g. `--to-pod kube-system/` is
/// `FilterFlag { name: "to-pod", value: "kube-system/" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterFlag {
    /// The flag's long name without dashes ("pod", "from-ip", "verdict").
    pub name: &'static str,
    /// The value given to it.
    pub value: String,
}

/// The filter flags of one `observe` command line, split by `--not`.
///
/// As in hubble, `--not` negates the next filter flag only; every negated
/// flag goes into one blacklist, built with the same rules as the
/// whitelist. So `--not --pod a --not --verdict DROPPED` hides the dropped
/// flows of pod a, not every flow of pod a and every dropped flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterArgs {
    /// Flags that select flows, in command-line order.
    pub whitelist: Vec<FilterFlag>,
    /// Flags that came right after `--not`, in command-line order.
    pub blacklist: Vec<FilterFlag>,
}

impl FilterArgs {
    /// The GetFlows whitelist these flags make.
    pub fn whitelist_filters(&self) -> anyhow::Result<Vec<FlowFilter>> {
        build(&self.whitelist)
    }

    /// The GetFlows blacklist these flags make.
    pub fn blacklist_filters(&self) -> anyhow::Result<Vec<FlowFilter>> {
        build(&self.blacklist)
    }
}

/// Hubble CLI's two-sided filter: `left` (source side) OR `right`
/// (destination side). Flags naming both sides write source_X on the left
/// and destination_X on the right; every other flag writes both.
#[derive(Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
}

impl Tracker {
    fn left(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.left.get_or_insert_with(FlowFilter::default));
    }
    fn right(&mut self, update: impl FnOnce(&mut FlowFilter)) {
        update(self.right.get_or_insert_with(FlowFilter::default));
    }
    fn both(&mut self, update: impl Fn(&mut FlowFilter)) {
        self.left(&update);
        self.right(&update);
    }
    fn filters(self) -> Vec<FlowFilter> {
        match (self.left, self.right) {
            (Some(l), Some(r)) if l == r => vec![l],
            (l, r) => l.into_iter().chain(r).collect(),
        }
    }
}

/// A list field of FlowFilter that holds strings.
type Field = fn(&mut FlowFilter) -> &mut Vec<String>;

/// How a flag's value goes into the filters.
enum Rule {
    /// `--X`: the source field on the left, the destination field on the right.
    Either(Field, Field),
    /// `--from-X`, `--to-X` and flow properties: the field on both sides.
    Both(Field),
    /// A value that needs parsing first.
    Parsed(fn(&mut Tracker, &str) -> anyhow::Result<()>),
}

/// One filter flag of the command line.
struct Spec {
    name: &'static str,
    short: Option<char>,
    help: &'static str,
    rule: Rule,
}

const fn spec(name: &'static str, help: &'static str, rule: Rule) -> Spec {
    Spec {
        name,
        short: None,
        help,
        rule,
    }
}

/// Every filter flag, in the order `--help` lists them.
const SPECS: &[Spec] = &[
    spec(
        "pod",
        "Flows from or to a pod ([namespace/]pod-prefix; namespace defaults to \"default\")",
        Rule::Either(|f| &mut f.source_pod, |f| &mut f.destination_pod),
    ),
    spec(
        "from-pod",
        "Flows from a pod ([namespace/]pod-prefix)",
        Rule::Both(|f| &mut f.source_pod),
    ),
    spec(
        "to-pod",
        "Flows to a pod ([namespace/]pod-prefix)",
        Rule::Both(|f| &mut f.destination_pod),
    ),
    Spec {
        short: Some('n'),
        ..spec(
            "namespace",
            "Flows from or to a namespace",
            Rule::Parsed(|t, v| {
                let ns = namespace_prefix(v);
                t.left(|f| f.source_pod.push(ns.clone()));
                t.right(|f| f.destination_pod.push(ns.clone()));
                Ok(())
            }),
        )
    },
    spec(
        "from-namespace",
        "Flows from a namespace",
        Rule::Parsed(|t, v| {
            let ns = namespace_prefix(v);
            t.both(|f| f.source_pod.push(ns.clone()));
            Ok(())
        }),
    ),
    spec(
        "to-namespace",
        "Flows to a namespace",
        Rule::Parsed(|t, v| {
            let ns = namespace_prefix(v);
            t.both(|f| f.destination_pod.push(ns.clone()));
            Ok(())
        }),
    ),
    Spec {
        short: Some('l'),
        ..spec(
            "label",
            "Flows from or to endpoints matching a label selector",
            Rule::Either(|f| &mut f.source_label, |f| &mut f.destination_label),
        )
    },
    spec(
        "from-label",
        "Flows from endpoints matching a label selector",
        Rule::Both(|f| &mut f.source_label),
    ),
    spec(
        "to-label",
        "Flows to endpoints matching a label selector",
        Rule::Both(|f| &mut f.destination_label),
    ),
    spec(
        "service",
        "Flows from or to a service ([namespace/]name)",
        Rule::Either(|f| &mut f.source_service, |f| &mut f.destination_service),
    ),
    spec(
        "from-service",
        "Flows from a service",
        Rule::Both(|f| &mut f.source_service),
    ),
    spec(
        "to-service",
        "Flows to a service",
        Rule::Both(|f| &mut f.destination_service),
    ),
    spec(
        "fqdn",
        "Flows from or to a DNS name (\"*.cilium.io\")",
        Rule::Either(|f| &mut f.source_fqdn, |f| &mut f.destination_fqdn),
    ),
    spec(
        "from-fqdn",
        "Flows from a DNS name",
        Rule::Both(|f| &mut f.source_fqdn),
    ),
    spec(
        "to-fqdn",
        "Flows to a DNS name",
        Rule::Both(|f| &mut f.destination_fqdn),
    ),
    spec(
        "identity",
        "Flows from or to a security identity (a number or a reserved name: world, host, ...)",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.left(|f| f.source_identity.push(id));
            t.right(|f| f.destination_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "from-identity",
        "Flows from a security identity",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.both(|f| f.source_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "to-identity",
        "Flows to a security identity",
        Rule::Parsed(|t, v| {
            let id = parse_identity(v)?;
            t.both(|f| f.destination_identity.push(id));
            Ok(())
        }),
    ),
    spec(
        "ip",
        "Flows from or to an IP address or CIDR",
        Rule::Either(|f| &mut f.source_ip, |f| &mut f.destination_ip),
    ),
    spec(
        "from-ip",
        "Flows from an IP address or CIDR",
        Rule::Both(|f| &mut f.source_ip),
    ),
    spec(
        "to-ip",
        "Flows to an IP address or CIDR",
        Rule::Both(|f| &mut f.destination_ip),
    ),
    spec(
        "port",
        "Flows with this L4 source or destination port",
        Rule::Either(|f| &mut f.source_port, |f| &mut f.destination_port),
    ),
    spec(
        "from-port",
        "Flows with this L4 source port",
        Rule::Both(|f| &mut f.source_port),
    ),
    spec(
        "to-port",
        "Flows with this L4 destination port",
        Rule::Both(|f| &mut f.destination_port),
    ),
    spec(
        "verdict",
        "Flows with this verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED)",
        Rule::Parsed(|t, v| {
            let verdict = parse_verdict(v)?;
            t.both(|f| f.verdict.push(verdict));
            Ok(())
        }),
    ),
    Spec {
        short: Some('t'),
        ..spec(
            "type",
            "Event types: TYPE[:SUBTYPE], e.g. drop, trace:to-endpoint, l7, policy-verdict",
            Rule::Parsed(|t, v| {
                let event_type = parse_event_type(v)?;
                t.both(|f| f.event_type.push(event_type));
                Ok(())
            }),
        )
    },
    spec(
        "protocol",
        "L4 or L7 protocol: tcp, udp, icmp, http, dns, ...",
        Rule::Both(|f| &mut f.protocol),
    ),
    spec(
        "http-status",
        "HTTP status code or prefix: 404, 4+, 5+",
        Rule::Both(|f| &mut f.http_status_code),
    ),
    spec(
        "http-method",
        "HTTP method",
        Rule::Both(|f| &mut f.http_method),
    ),
    spec(
        "http-path",
        "HTTP path regular expression",
        Rule::Both(|f| &mut f.http_path),
    ),
    spec(
        "traffic-direction",
        "Traffic direction: ingress or egress",
        Rule::Parsed(|t, v| {
            let direction = parse_direction(v)?;
            t.both(|f| f.traffic_direction.push(direction));
            Ok(())
        }),
    ),
    spec(
        "is-reply",
        "Only replies (true) or only requests (false)",
        Rule::Parsed(|t, v| {
            let reply: bool = v.parse().with_context(|| {
                format!("invalid --is-reply value {v:?}: expected true or false")
            })?;
            t.both(|f| f.reply.push(reply));
            Ok(())
        }),
    ),
    spec(
        "node-name",
        "Node name pattern (\"k8s*\", \"cluster/*\")",
        Rule::Both(|f| &mut f.node_name),
    ),
];

/// Help heading of the filter flags in `--help`.
const HEADING: &str = "Filters";

fn namespace_prefix(ns: &str) -> String {
    format!("{}/", ns.trim_end_matches('/'))
}

fn parse_identity(value: &str) -> anyhow::Result<u32> {
    value
        .parse()
        .ok()
        .or_else(|| printer::reserved_identity(value))
        .with_context(|| {
            format!(
                "invalid security identity {value:?}: expected a number or one of {}",
                printer::RESERVED_IDENTITIES
                    .iter()
                    .map(|(_, name)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn parse_verdict(value: &str) -> anyhow::Result<i32> {
    Verdict::from_str_name(&value.to_ascii_uppercase())
        .map(|v| v as i32)
        .with_context(|| format!("unknown verdict {value:?}: expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED"))
}

fn parse_event_type(value: &str) -> anyhow::Result<EventTypeFilter> {
    let (name, sub) = match value.split_once(':') {
        Some((n, s)) => (n, Some(s)),
        None => (value, None),
    };
    let code = filter::event_type_code(name).with_context(|| {
        format!("unknown event type {name:?}: expected drop, trace, l7, policy-verdict, capture, trace-sock, debug or agent")
    })?;
    let mut f = EventTypeFilter {
        r#type: code,
        match_sub_type: false,
        sub_type: 0,
    };
    if let Some(sub) = sub {
        if code != flows::MESSAGE_TYPE_TRACE {
            bail!("event type {name:?} has no subtypes; only trace:SUBTYPE is supported");
        }
        f.sub_type = flows::trace_subtype_by_name(sub)
            .with_context(|| format!("unknown trace subtype {sub:?}: expected to-endpoint, to-proxy, to-stack, from-endpoint, ..."))?;
        f.match_sub_type = true;
    }
    Ok(f)
}

fn parse_direction(value: &str) -> anyhow::Result<i32> {
    match value.to_ascii_lowercase().as_str() {
        "ingress" => Ok(TrafficDirection::Ingress as i32),
        "egress" => Ok(TrafficDirection::Egress as i32),
        _ => bail!("unknown traffic direction {value:?}: expected ingress or egress"),
    }
}

/// The FlowFilters one list of flags makes, as hubble's filter tracker does.
fn build(flags: &[FilterFlag]) -> anyhow::Result<Vec<FlowFilter>> {
    let mut t = Tracker::default();
    for flag in flags {
        let spec = SPECS
            .iter()
            .find(|s| s.name == flag.name)
            .with_context(|| format!("--{} is not a filter flag", flag.name))?;
        let value = flag.value.as_str();
        match spec.rule {
            Rule::Either(source, destination) => {
                t.left(|f| source(f).push(value.to_string()));
                t.right(|f| destination(f).push(value.to_string()));
            }
            Rule::Both(field) => t.both(|f| field(f).push(value.to_string())),
            Rule::Parsed(apply) => {
                apply(&mut t, value).with_context(|| format!("--{}", flag.name))?
            }
        }
    }
    Ok(t.filters())
}

impl clap::Args for FilterArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // A flag without value, kept per occurrence (a counting flag keeps
        // only the last one's position).
        let not = Arg::new("not")
            .long("not")
            .action(ArgAction::Append)
            .num_args(0)
            .default_missing_value("true")
            .help_heading(HEADING)
            .help("Negate the next filter flag: flows it matches are left out (--not --verdict FORWARDED)");
        SPECS.iter().fold(cmd.arg(not), |cmd, spec| {
            let mut arg = Arg::new(spec.name)
                .long(spec.name)
                .action(ArgAction::Append)
                .value_name("FILTER")
                .help_heading(HEADING)
                .help(spec.help);
            if let Some(short) = spec.short {
                arg = arg.short(short);
            }
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for FilterArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        // Everything that decides a flag's list, by its position in argv:
        // `--not` (None) or a filter flag's value (Some).
        let mut events: Vec<(usize, Option<FilterFlag>)> = matches
            .indices_of("not")
            .into_iter()
            .flatten()
            .map(|index| (index, None))
            .collect();
        for spec in SPECS {
            let (Some(indices), Some(values)) = (
                matches.indices_of(spec.name),
                matches.get_many::<String>(spec.name),
            ) else {
                continue;
            };
            events.extend(indices.zip(values).map(|(index, value)| {
                let flag = FilterFlag {
                    name: spec.name,
                    value: value.clone(),
                };
                (index, Some(flag))
            }));
        }
        events.sort_by_key(|(index, _)| *index);

        let mut args = Self::default();
        let mut negate = false;
        for (_, event) in events {
            match event {
                None if negate => {
                    return Err(clap::Error::raw(
                        ErrorKind::ArgumentConflict,
                        "--not is given twice in a row: it negates the one filter flag that follows it",
                    ));
                }
                None => negate = true,
                Some(flag) if negate => {
                    args.blacklist.push(flag);
                    negate = false;
                }
                Some(flag) => args.whitelist.push(flag),
            }
        }
        if negate {
            return Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                "--not must be followed by the filter flag it negates, e.g. --not --verdict FORWARDED",
            ));
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        /// A flag that is not a filter, to check `--not` skips over it.
        #[arg(long)]
        last: Option<u64>,
        #[command(flatten)]
        filters: FilterArgs,
    }

    fn parse(argv: &[&str]) -> Result<FilterArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("observe").chain(argv.iter().copied()))
            .map(|c| c.filters)
    }

    fn flag(name: &'static str, value: &str) -> FilterFlag {
        FilterFlag {
            name,
            value: value.to_string(),
        }
    }

    #[test]
    fn not_negates_the_next_filter_flag_only() {
        let args = parse(&[
            "--pod",
            "default/xwing",
            "--not",
            "--to-pod",
            "kube-system/",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.whitelist, [flag("pod", "default/xwing")]);
        assert_eq!(args.blacklist, [flag("to-pod", "kube-system/")]);

        let args = parse(&[
            "--not",
            "--last",
            "5",
            "-t",
            "drop",
            "--verdict=DROPPED",
            "--not",
            "--verdict",
            "FORWARDED",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.whitelist,
            [flag("verdict", "DROPPED")],
            "--not skips --last, takes -t"
        );
        assert_eq!(
            args.blacklist,
            [flag("type", "drop"), flag("verdict", "FORWARDED")]
        );
    }

    #[test]
    fn not_without_a_following_filter_is_an_error() {
        for argv in [
            &["--not"][..],
            &["--pod", "xwing", "--not"],
            &["--not", "--last", "3"],
        ] {
            let err = parse(argv).expect_err("trailing --not");
            assert!(
                err.to_string()
                    .contains("--not must be followed by the filter flag it negates"),
                "{argv:?}: {err}"
            );
        }
        let err = parse(&["--not", "--not", "--pod", "xwing"]).expect_err("--not --not");
        assert!(err.to_string().contains("twice in a row"), "{err}");
    }

    #[test]
    fn both_lists_are_built_like_hubble() {
        let args = parse(&[
            "--pod",
            "default/xwing",
            "--not",
            "--to-pod",
            "kube-system/",
            "--not",
            "--identity",
            "world",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let white = args.whitelist_filters().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            white,
            [
                FlowFilter {
                    source_pod: vec!["default/xwing".into()],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["default/xwing".into()],
                    ..Default::default()
                },
            ]
        );
        // One blacklist tracker: negated flags are ANDed as in hubble.
        let black = args.blacklist_filters().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            black,
            [
                FlowFilter {
                    destination_pod: vec!["kube-system/".into()],
                    source_identity: vec![2],
                    ..Default::default()
                },
                FlowFilter {
                    destination_pod: vec!["kube-system/".into()],
                    destination_identity: vec![2],
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn every_flag_builds_a_filter() {
        let value = |name: &str| match name {
            "namespace" | "from-namespace" | "to-namespace" => "default",
            "identity" | "from-identity" | "to-identity" => "42",
            "verdict" => "DROPPED",
            "type" => "drop",
            "protocol" => "tcp",
            "http-status" => "404",
            "traffic-direction" => "ingress",
            "is-reply" => "true",
            "port" | "from-port" | "to-port" => "80",
            "ip" | "from-ip" | "to-ip" => "10.0.0.1",
            _ => "x",
        };
        for spec in SPECS {
            let argv = [format!("--{}", spec.name), value(spec.name).to_string()];
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let args = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
            let filters = args.whitelist_filters().unwrap_or_else(|e| panic!("{e:#}"));
            assert!(
                !filters.is_empty() && filters.iter().all(|f| *f != FlowFilter::default()),
                "--{} made {filters:?}",
                spec.name
            );
            filter::FilterSet::new(&filters, &[])
                .unwrap_or_else(|e| panic!("--{}: {e}", spec.name));
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let args = parse(&["--not", "--identity", "nobody"]).unwrap_or_else(|e| panic!("{e}"));
        let err = args.blacklist_filters().expect_err("unknown identity");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("--identity: invalid security identity"),
            "{text}"
        );
        assert!(text.contains("world"), "{text}");
    }
}
