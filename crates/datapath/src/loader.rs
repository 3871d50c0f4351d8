//! Loading the object, attaching its programs to pod veths with TCX links,
//! and pinning all of it under the node's bpffs directory.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use myelin_common::maps::{StatsKey, names};
use myelin_common::{Direction, EndpointInfo, PacketStats};

use crate::error::DatapathError;
use crate::events::EventReader;

/// The program on a pod veth's ingress: packets leaving the pod.
pub const PROGRAM_FROM_CONTAINER: &str = "from_container";
/// The program on a pod veth's egress: packets entering the pod.
pub const PROGRAM_TO_CONTAINER: &str = "to_container";

const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (
        PROGRAM_FROM_CONTAINER,
        TcAttachType::Ingress,
        "from_container",
    ),
    (PROGRAM_TO_CONTAINER, TcAttachType::Egress, "to_container"),
];

/// The loaded kernel programs and maps of one node.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

/// The outcome of attaching an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAttachment {
    /// Host-side interface name.
    pub ifname: String,
    /// Its ifindex in the node's network namespace.
    pub ifindex: u32,
    /// True when the programs were already attached (found pinned after an
    /// agent restart) and were kept as they were.
    pub readopted: bool,
}

impl Datapath {
    /// Loads the kernel programs, creating or reusing the maps pinned under
    /// `pin_dir/maps` (a directory on a bpffs).
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        if crate::KERNEL_OBJECT.is_empty() {
            return Err(DatapathError::NoKernelPrograms);
        }
        for sub in ["maps", "links"] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|source| DatapathError::PinDirectory { path: dir, source })?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir.join("maps"))
            .load(crate::KERNEL_OBJECT)?;
        for (name, _, _) in HOOKS {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// The bpffs directory this datapath pins under.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// bpffs refuses object names with a dot, so each interface gets a
    /// directory with one pin per hook.
    fn link_pin(&self, ifname: &str, suffix: &str) -> PathBuf {
        self.pin_dir.join("links").join(ifname).join(suffix)
    }

    /// Registers the endpoint behind host-side veth `ifname` and attaches the
    /// programs to it. Attachments found pinned and live are kept (agent
    /// restart); stale pins are replaced.
    pub fn attach_endpoint(
        &mut self,
        ifname: &str,
        info: &EndpointInfo,
    ) -> Result<EndpointAttachment, DatapathError> {
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|source| DatapathError::Interface {
                name: ifname.to_string(),
                source,
            })?;
        self.endpoints_map()?
            .insert(ifindex, info, 0)
            .map_err(|source| DatapathError::Map {
                map: names::ENDPOINTS,
                source,
            })?;
        let link_dir = self.pin_dir.join("links").join(ifname);
        std::fs::create_dir_all(&link_dir).map_err(|source| DatapathError::PinDirectory {
            path: link_dir.clone(),
            source,
        })?;
        let mut readopted = true;
        for (program, attach_type, suffix) in HOOKS {
            let pin = self.link_pin(ifname, suffix);
            if pin.exists() {
                if attached_here(ifname, attach_type, program) {
                    continue;
                }
                unpin(&pin)?;
            }
            readopted = false;
            let prog = classifier(&mut self.ebpf, program)?;
            let link_id = prog
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| DatapathError::Program { program, source })?;
            let link = prog
                .take_link(link_id)
                .map_err(|source| DatapathError::Program { program, source })?;
            let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                message: format!("the attachment is not a bpf link ({e}); TCX needs kernel >= 6.6"),
            })?;
            fd_link.pin(&pin).map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                message: with_sources(&e),
            })?;
        }
        Ok(EndpointAttachment {
            ifname: ifname.to_string(),
            ifindex,
            readopted,
        })
    }

    /// Detaches the programs from `ifname` and forgets the endpoint. Works
    /// also when the interface is already gone.
    pub fn detach_endpoint(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        for (_, _, suffix) in HOOKS {
            let pin = self.link_pin(ifname, suffix);
            if pin.exists() {
                unpin(&pin)?;
            }
        }
        let _ = std::fs::remove_dir(self.pin_dir.join("links").join(ifname));
        // Entries may already be absent: removal is idempotent.
        let _ = self.endpoints_map()?.remove(&ifindex);
        let mut stats = self.stats_map()?;
        for direction in [Direction::FromContainer, Direction::ToContainer] {
            let _ = stats.remove(&StatsKey {
                ifindex,
                direction: direction as u32,
            });
        }
        Ok(())
    }

    /// Host-side interface names that have pinned attachments, for
    /// reconciliation after a restart.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pin_dir.join("links"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// Packets and bytes of one endpoint, leaving and entering the pod,
    /// summed over CPUs.
    pub fn stats(&self, ifindex: u32) -> Result<(PacketStats, PacketStats), DatapathError> {
        let map = self
            .ebpf
            .map(names::STATS)
            .ok_or(DatapathError::MissingMap(names::STATS))?;
        let stats: PerCpuHashMap<&MapData, StatsKey, PacketStats> = PerCpuHashMap::try_from(map)
            .map_err(|source| DatapathError::Map {
                map: names::STATS,
                source,
            })?;
        let sum = |direction: Direction| {
            let key = StatsKey {
                ifindex,
                direction: direction as u32,
            };
            stats
                .get(&key, 0)
                .map_or(PacketStats::default(), |per_cpu| {
                    per_cpu
                        .iter()
                        .fold(PacketStats::default(), |acc, s| PacketStats {
                            packets: acc.packets + s.packets,
                            bytes: acc.bytes + s.bytes,
                        })
                })
        };
        Ok((sum(Direction::FromContainer), sum(Direction::ToContainer)))
    }

    /// Takes the event ring and the lost-events counter; call once.
    pub fn event_reader(&mut self) -> Result<EventReader, DatapathError> {
        let ring = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(DatapathError::MissingMap(names::EVENTS))?;
        let lost = self
            .ebpf
            .take_map(names::LOST)
            .ok_or(DatapathError::MissingMap(names::LOST))?;
        EventReader::new(ring, lost)
    }

    /// Runs a program once on a crafted Ethernet frame with
    /// `BPF_PROG_TEST_RUN`, returning the TC verdict and the frame as the
    /// program left it. `repeat` > 1 measures per-packet cost.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, DatapathError> {
        let prog = classifier(&mut self.ebpf, program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..TestRunOptions::default()
            })
            .map_err(|source| DatapathError::Program { program, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            verdict: result.return_value as i32,
            frame: out,
            duration: result.duration,
        })
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, u32, EndpointInfo>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(names::ENDPOINTS)
            .ok_or(DatapathError::MissingMap(names::ENDPOINTS))?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: names::ENDPOINTS,
            source,
        })
    }

    fn stats_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut MapData, StatsKey, PacketStats>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(names::STATS)
            .ok_or(DatapathError::MissingMap(names::STATS))?;
        PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: names::STATS,
            source,
        })
    }
}

/// The result of a `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone)]
pub struct TestRunOutcome {
    /// The program's return value (TC_ACT_*).
    pub verdict: i32,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// Average time per run as the kernel measured it.
    pub duration: std::time::Duration,
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        program: name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    program.try_into().map_err(|source| DatapathError::Program {
        program: name,
        source,
    })
}

/// Whether a program of ours is attached to `ifname` at `attach_type`.
fn attached_here(ifname: &str, attach_type: TcAttachType, program: &str) -> bool {
    SchedClassifier::query_tcx(ifname, attach_type).is_ok_and(|(_, programs)| {
        programs.iter().any(|p| {
            p.name_as_str()
                .is_some_and(|n| program.starts_with(n) || n.starts_with(program))
        })
    })
}

/// An error with its causes, which aya keeps in `source()`.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unpin(pin: &Path) -> Result<(), DatapathError> {
    let link = PinnedLink::from_pin(pin).map_err(|e| DatapathError::Pin {
        path: pin.to_path_buf(),
        message: with_sources(&e),
    })?;
    // Dropping the unpinned link detaches it.
    link.unpin().map(drop).map_err(|e| DatapathError::Pin {
        path: pin.to_path_buf(),
        message: e.to_string(),
    })
}
