//! Loading the object, attaching its programs to pod veths with TCX links,
//! and pinning all of it under the node's bpffs directory.

use std::path::{Path, PathBuf};

use aya::maps::MapData;
use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::{SchedClassifier, SkLookup, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use myelin_common::maps::{StatsKey, names};
use myelin_common::{Direction, EndpointInfo, PacketStats};

use crate::error::DatapathError;
use crate::events::EventReader;
use crate::maps::Maps;
use crate::services::ServiceIndex;

/// The program on a pod veth's ingress: packets leaving the pod.
pub const PROGRAM_FROM_CONTAINER: &str = "from_container";
/// The program on a pod veth's egress: packets entering the pod.
pub const PROGRAM_TO_CONTAINER: &str = "to_container";
/// The program on the node's VXLAN device's ingress: packets from other
/// nodes' pods, decapsulated (tunnel mode).
pub const PROGRAM_FROM_OVERLAY: &str = "from_overlay";
/// The program on the node's VXLAN device's egress: the tunnel key of
/// packets the node's stack routes into the overlay.
pub const PROGRAM_TO_OVERLAY: &str = "to_overlay";
/// The program on the node's underlay-facing link's ingress (native
/// routing): hands flows from other nodes' pods that a local pod's ingress
/// policy redirects to the node's proxy.
pub const PROGRAM_FROM_UNDERLAY: &str = "from_underlay";
/// The node namespace's socket lookup program: hands a SYN that reopens a
/// redirected tuple still in TIME_WAIT to the proxy's listener.
pub const PROGRAM_PROXY_LOOKUP: &str = "proxy_lookup";

/// An endpoint record as builds before host routing wrote it (32 bytes:
/// no host ifindex, no MACs).
#[repr(C)]
#[derive(Clone, Copy)]
struct EndpointInfoV1 {
    endpoint_id: u32,
    identity: u32,
    ipv4: [u8; 4],
    flags: u32,
    ipv6: [u8; 16],
}

// SAFETY: repr(C), integers and byte arrays only, no padding.
unsafe impl aya::Pod for EndpointInfoV1 {}

/// Pinned endpoint maps whose records are smaller than this build's
/// [`EndpointInfo`] (pinned by an older build) cannot be reused: they are
/// read, unpinned (the programs still attached keep them until their links
/// are updated) and their records returned, without MACs, for the new maps.
/// Such endpoints keep going through the node's stack until re-registered
/// with their MACs.
fn take_old_endpoint_maps(maps: &Path) -> Result<Vec<(u32, EndpointInfo)>, DatapathError> {
    let pin_error = |path: &Path, message: String| DatapathError::Pin {
        path: path.to_path_buf(),
        message,
    };
    let endpoints = maps.join(names::ENDPOINTS);
    let Ok(data) = MapData::from_pin(&endpoints) else {
        return Ok(Vec::new());
    };
    let size = data
        .info()
        .map_err(|e| pin_error(&endpoints, with_sources(&e)))?
        .value_size();
    if size as usize == std::mem::size_of::<EndpointInfo>() {
        return Ok(Vec::new());
    }
    if size as usize != std::mem::size_of::<EndpointInfoV1>() {
        return Err(pin_error(
            &endpoints,
            format!(
                "pinned by an unknown build (records of {size} bytes); \
                 remove the node's bpffs directory to start afresh"
            ),
        ));
    }
    let map =
        aya::maps::Map::from_map_data(data).map_err(|e| pin_error(&endpoints, with_sources(&e)))?;
    let old: aya::maps::HashMap<MapData, u32, EndpointInfoV1> =
        aya::maps::HashMap::try_from(map).map_err(|e| pin_error(&endpoints, with_sources(&e)))?;
    let records = old
        .iter()
        .filter_map(Result::ok)
        .map(|(ifindex, e)| {
            let info = EndpointInfo {
                endpoint_id: e.endpoint_id,
                identity: e.identity,
                ipv4: e.ipv4,
                flags: 0,
                ipv6: e.ipv6,
                ..EndpointInfo::default()
            };
            (ifindex, info)
        })
        .collect();
    for name in [names::ENDPOINTS, names::ENDPOINTS_BY_IP] {
        let pin = maps.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_error(&pin, e.to_string())),
        }
    }
    Ok(records)
}

/// The pin of the socket lookup link (not under `links/`: that directory
/// holds one entry per interface).
const LOOKUP_LINK_PIN: &str = "sk_lookup";

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
    /// Typed handles on the maps, taken from `ebpf` at load.
    pub(crate) maps: Maps,
    /// What the service maps hold (read at load, kept in step by writes).
    pub(crate) service_index: ServiceIndex,
    pin_dir: PathBuf,
    /// The socket lookup program is attached to the calling thread's network
    /// namespace (done with the first endpoint: that namespace is the node's).
    lookup_attached: bool,
    /// See [`Datapath::replaced_pins`].
    replaced_pins: Vec<ReplacedPin>,
}

/// What [`Datapath::attach_tc`] did.
pub(crate) enum Attached {
    /// The pinned link already ran this program: kept.
    Kept,
    /// The pinned link ran another build's program: updated in place.
    Replaced,
    /// Newly attached and pinned.
    New,
}

/// The outcome of attaching an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAttachment {
    /// Host-side interface name.
    pub ifname: String,
    /// Its ifindex in the node's network namespace.
    pub ifindex: u32,
    /// True when the programs were already attached (found pinned after an
    /// agent restart) and were kept: traffic never saw a gap.
    pub readopted: bool,
    /// True when some attached program differed from this binary's (an
    /// upgrade) and was replaced in place, atomically (TCX link update).
    pub replaced: bool,
}

/// What decides whether a program can use a map: its type and record sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapLayout {
    /// The kernel's map type number (`BPF_MAP_TYPE_*`).
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values",
            self.map_type, self.key_size, self.value_size
        )
    }
}

/// A map another build pinned with a layout this build's programs cannot use. It was
/// unpinned and created anew, empty, for the agent to fill again; the programs still
/// attached keep the old one until their links are updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedPin {
    /// The map's name.
    pub name: String,
    /// The layout found pinned.
    pub pinned: MapLayout,
    /// This build's layout.
    pub expected: MapLayout,
}

impl std::fmt::Display for ReplacedPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was pinned with {}; this build uses {}",
            self.name, self.pinned, self.expected
        )
    }
}

/// Unpins every map under `maps` whose layout differs from the object's definition of
/// it, so that the loader creates it anew instead of handing the programs a map they
/// would misread (or the verifier refuses). Maps whose content cannot be rebuilt from the
/// agent's state are not among them: the endpoint maps are carried over by
/// [`take_old_endpoint_maps`] before this runs. Ring buffers are compared by type only
/// (their record size is not part of the map).
fn replace_incompatible_pins(maps: &Path) -> Result<Vec<ReplacedPin>, DatapathError> {
    let object = aya_obj::Object::parse(crate::KERNEL_OBJECT)
        .map_err(|e| DatapathError::Object(e.to_string()))?;
    let mut replaced = Vec::new();
    for (name, definition) in &object.maps {
        if !matches!(definition.pinning(), aya_obj::maps::PinningType::ByName) {
            continue;
        }
        let pin = maps.join(name);
        let Ok(data) = MapData::from_pin(&pin) else {
            continue;
        };
        let info = data.info().map_err(|e| DatapathError::Pin {
            path: pin.clone(),
            message: with_sources(&e),
        })?;
        let ring =
            definition.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
        let pinned = MapLayout {
            // A type this aya does not know cannot be this build's either.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: if ring { 0 } else { info.value_size() },
        };
        let expected = MapLayout {
            map_type: definition.map_type(),
            key_size: definition.key_size(),
            value_size: if ring { 0 } else { definition.value_size() },
        };
        if pinned == expected {
            continue;
        }
        drop(data);
        std::fs::remove_file(&pin).map_err(|e| DatapathError::Pin {
            path: pin.clone(),
            message: e.to_string(),
        })?;
        replaced.push(ReplacedPin {
            name: name.clone(),
            pinned,
            expected,
        });
    }
    replaced.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(replaced)
}

impl Datapath {
    /// Loads the kernel programs, creating or reusing the maps pinned under
    /// `pin_dir/maps` (a directory on a bpffs). A pinned map whose layout this
    /// build cannot use is created anew ([`Datapath::replaced_pins`]).
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with_capacities(pin_dir, &[])
    }

    /// [`Datapath::load`], creating the maps named in `capacities` with
    /// that many entries instead of the object's (maps found pinned keep
    /// theirs). For node sizing, and tests that fill a map.
    pub fn load_with_capacities(
        pin_dir: &Path,
        capacities: &[(&str, u32)],
    ) -> Result<Self, DatapathError> {
        if crate::KERNEL_OBJECT.is_empty() {
            return Err(DatapathError::NoKernelPrograms);
        }
        for sub in ["maps", "links"] {
            let dir = pin_dir.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|source| DatapathError::PinDirectory { path: dir, source })?;
        }
        let migrated = take_old_endpoint_maps(&pin_dir.join("maps"))?;
        let replaced_pins = replace_incompatible_pins(&pin_dir.join("maps"))?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(pin_dir.join("maps"));
        for (name, entries) in capacities {
            loader.map_max_entries(name, *entries);
        }
        let mut ebpf = loader.load(crate::KERNEL_OBJECT)?;
        for name in HOOKS.map(|(name, _, _)| name).into_iter().chain([
            PROGRAM_FROM_OVERLAY,
            PROGRAM_TO_OVERLAY,
            PROGRAM_FROM_UNDERLAY,
        ]) {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        socket_lookup(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PROGRAM_PROXY_LOOKUP,
                source,
            })?;
        let mut maps = Maps::take(&mut ebpf)?;
        let service_index = ServiceIndex::load(&mut maps)?;
        let mut datapath = Self {
            ebpf,
            maps,
            service_index,
            pin_dir: pin_dir.to_path_buf(),
            lookup_attached: false,
            replaced_pins,
        };
        for (ifindex, info) in migrated {
            datapath.upsert_endpoint(ifindex, &info)?;
        }
        Ok(datapath)
    }

    /// Maps found pinned with a layout this build cannot use, created anew by
    /// [`Datapath::load`]: their content is gone and must be written again.
    pub fn replaced_pins(&self) -> &[ReplacedPin] {
        &self.replaced_pins
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

    /// The directory of the overlay device's link pin (apart from `links/`,
    /// whose entries are the endpoints' interfaces).
    pub(crate) fn overlay_pin_dir(&self) -> PathBuf {
        self.pin_dir.join("overlay")
    }

    /// Where the links on the node's underlay-facing links are pinned.
    pub(crate) fn underlay_pin_dir(&self) -> PathBuf {
        self.pin_dir.join("underlay")
    }

    /// The pin of `program`'s link on the overlay device `ifname`.
    pub(crate) fn overlay_link_pin(&self, ifname: &str, program: &str) -> PathBuf {
        self.overlay_pin_dir().join(ifname).join(program)
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
        self.upsert_endpoint(ifindex, info)?;
        self.attach_socket_lookup()?;
        let link_dir = self.pin_dir.join("links").join(ifname);
        std::fs::create_dir_all(&link_dir).map_err(|source| DatapathError::PinDirectory {
            path: link_dir.clone(),
            source,
        })?;
        let mut readopted = true;
        let mut replaced = false;
        for (program, attach_type, suffix) in HOOKS {
            let pin = self.link_pin(ifname, suffix);
            match self.attach_tc(ifname, program, attach_type, &pin)? {
                Attached::Kept => {}
                Attached::Replaced => replaced = true,
                Attached::New => readopted = false,
            }
        }
        Ok(EndpointAttachment {
            ifname: ifname.to_string(),
            ifindex,
            readopted,
            replaced,
        })
    }

    /// Attaches TC `program` to `ifname` at `attach_type` with a TCX link
    /// pinned at `pin`. A live pinned link running the same program is kept;
    /// one running another build's is updated in place (atomically, the hook
    /// is never empty); a stale pin is replaced.
    pub(crate) fn attach_tc(
        &mut self,
        ifname: &str,
        program: &'static str,
        attach_type: TcAttachType,
        pin: &Path,
    ) -> Result<Attached, DatapathError> {
        if pin.exists() {
            let ours = classifier(&mut self.ebpf, program)?
                .info()
                .map_err(|source| DatapathError::Program { program, source })?
                .tag();
            match attached_tag(ifname, attach_type, program) {
                // The same instructions, using the same maps: keep it. (A program's tag
                // leaves out which maps it uses, so one attached over a map this load
                // created anew is swapped too.)
                Some(tag) if tag == ours && self.replaced_pins.is_empty() => {
                    return Ok(Attached::Kept);
                }
                Some(_) => {
                    self.update_link(program, pin)?;
                    return Ok(Attached::Replaced);
                }
                None => unpin(pin)?,
            }
        }
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
            path: pin.to_path_buf(),
            message: format!("the attachment is not a bpf link ({e}); TCX needs kernel >= 6.6"),
        })?;
        fd_link.pin(pin).map_err(|e| DatapathError::Pin {
            path: pin.to_path_buf(),
            message: with_sources(&e),
        })?;
        Ok(Attached::New)
    }

    /// Attaches [`PROGRAM_PROXY_LOOKUP`] to the calling thread's network
    /// namespace (the node's) and pins the link, replacing a link an earlier load
    /// pinned: the new one is attached before the old one goes, so listener
    /// lookups are never without it. Once per load.
    fn attach_socket_lookup(&mut self) -> Result<(), DatapathError> {
        if self.lookup_attached {
            return Ok(());
        }
        let program = PROGRAM_PROXY_LOOKUP;
        let netns =
            std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| DatapathError::Pin {
                path: PathBuf::from("/proc/thread-self/ns/net"),
                message: e.to_string(),
            })?;
        let prog = socket_lookup(&mut self.ebpf)?;
        let link_id = prog
            .attach(&netns)
            .map_err(|source| DatapathError::Program { program, source })?;
        let link = prog
            .take_link(link_id)
            .map_err(|source| DatapathError::Program { program, source })?;
        let pin = self.pin_dir.join(LOOKUP_LINK_PIN);
        if pin.exists() {
            unpin(&pin)?;
        }
        FdLink::from(link)
            .pin(&pin)
            .map_err(|e| DatapathError::Pin {
                path: pin.clone(),
                message: with_sources(&e),
            })?;
        self.lookup_attached = true;
        Ok(())
    }

    /// Points the pinned TCX link at `pin` to this binary's `program`
    /// (bpf_link_update: atomic, the hook is never empty).
    fn update_link(&mut self, program: &'static str, pin: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(pin).map_err(|e| DatapathError::Pin {
            path: pin.to_path_buf(),
            message: with_sources(&e),
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
            DatapathError::Pin {
                path: pin.to_path_buf(),
                message: format!("the pinned link is not a TCX link: {e}"),
            }
        })?;
        classifier(&mut self.ebpf, program)?
            .attach_to_link(link)
            .map_err(|source| DatapathError::Program { program, source })?;
        Ok(())
    }

    /// Detaches the programs from `ifname` and forgets the endpoint (its
    /// records, policy and counters). Works also when the interface is
    /// already gone. `ifindex` 0 means unknown: it is looked up by name if
    /// the interface still exists; otherwise the records of a vanished
    /// interface stay until [`Datapath::delete_endpoint`] is called with the
    /// ifindex [`Datapath::endpoints`] shows.
    pub fn detach_endpoint(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        let ifindex = if ifindex == 0 {
            nix::net::if_::if_nametoindex(ifname).unwrap_or(0)
        } else {
            ifindex
        };
        for (_, _, suffix) in HOOKS {
            let pin = self.link_pin(ifname, suffix);
            if pin.exists() {
                unpin(&pin)?;
            }
        }
        let _ = std::fs::remove_dir(self.pin_dir.join("links").join(ifname));
        if ifindex == 0 {
            return Ok(());
        }
        self.delete_endpoint(ifindex)?;
        for direction in [Direction::FromContainer, Direction::ToContainer] {
            let _ = self.maps.stats.remove(&StatsKey {
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
        let stats = &self.maps.stats;
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

    /// Takes the event ring and its counters (lost events, suppressed
    /// drops); call once.
    pub fn event_reader(&mut self) -> Result<EventReader, DatapathError> {
        let maps = self
            .maps
            .events
            .take()
            .ok_or(DatapathError::MissingMap(names::EVENTS))?;
        EventReader::new(maps)
    }

    /// Runs a program once on a crafted Ethernet frame with
    /// `BPF_PROG_TEST_RUN`, returning the TC verdict and the frame as the
    /// program left it. `repeat` > 1 measures per-packet cost. The kernel
    /// runs it with skb->ifindex of loopback (1).
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome, DatapathError> {
        self.test_run_marked(program, frame, 0, repeat)
    }

    /// [`Datapath::test_run`] with `skb->mark` set to `mark` (e.g. the
    /// proxy's 0xb00, with an identity in the upper 16 bits).
    pub fn test_run_marked(
        &mut self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
        repeat: u32,
    ) -> Result<TestRunOutcome, DatapathError> {
        let prog = classifier(&mut self.ebpf, program)?;
        let mut out = vec![0u8; frame.len() + 256];
        // struct __sk_buff up to and including ifindex; only mark is set
        // (offset 8), everything else must stay zero for the kernel.
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
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

/// The loaded program `name` as its type (a TC classifier, the socket lookup program).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DatapathError::Program {
        program: name,
        source: aya::programs::ProgramError::NotLoaded,
    })?;
    program.try_into().map_err(|source| DatapathError::Program {
        program: name,
        source,
    })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program(ebpf, name)
}

fn socket_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DatapathError> {
    program(ebpf, PROGRAM_PROXY_LOOKUP)
}

/// The tag of our program attached to `ifname` at `attach_type`, if any.
fn attached_tag(ifname: &str, attach_type: TcAttachType, program: &str) -> Option<u64> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, attach_type).ok()?;
    programs
        .iter()
        .find(|p| {
            p.name_as_str()
                .is_some_and(|n| program.starts_with(n) || n.starts_with(program))
        })
        .map(aya::programs::ProgramInfo::tag)
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

pub(crate) fn unpin(pin: &Path) -> Result<(), DatapathError> {
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
