//! Planning and running targets: look at what is on disk, decide what to make, check every
//! limit, generate keys in parallel, sign, prove, and write it all in one transaction.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshca_pki::bundle::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use meshca_pki::profile::days_from;
use meshca_pki::{
    CaProfile, CaSigner, CacertsBundle, Certificate, KeyType, PkiError, PrivateKey, SpiffeId,
    Subject, WorkloadProfile, verify_path,
};
use meshca_store::{FileSpec, Transaction};
use time::OffsetDateTime;

use crate::error::CertsError;
use crate::settings::{Checked, DEFAULT_INTERMEDIATE_DAYS, DEFAULT_WORKLOAD_DAYS, Settings};
use crate::target::Target;

const ROOT_KEY: &str = "root-key.pem";
const WORKLOAD_KEY: &str = "key.pem";
const WORKLOAD_CERT: &str = "workload-cert.pem";
const WORKLOAD_CHAIN: &str = "workload-cert-chain.pem";
/// What `clean` removes: the root's files and the by-products of the Makefile's openssl steps.
const CLEAN_FILES: &[&str] = &[
    "root-cert.pem",
    "root-key.pem",
    "root-ca.conf",
    "root-cert.csr",
    "root-cert.srl",
    "k8s-root-cert.pem",
    "k8s-root-cert.srl",
    "k8s-root-key.pem",
];

/// Key generation progress, reported as keys finish.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// keys finished
    pub done: usize,
    /// keys in all
    pub total: usize,
    /// how many of them are slow (RSA-3072/4096) to make
    pub slow: usize,
}

/// What happened to one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// the target
    pub target: Target,
    /// what was done
    pub status: Status,
}

/// What was done for a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Files were written (paths relative to the working folder), with notes worth reading.
    Generated {
        /// the files written
        files: Vec<String>,
        /// the main certificate's key type
        key_type: KeyType,
        /// when the main certificate expires
        not_after: OffsetDateTime,
        /// remarks, such as a lifetime shortened to the issuer's
        notes: Vec<String>,
    },
    /// The outputs exist and are valid; nothing was written.
    UpToDate {
        /// when the main certificate expires
        not_after: OffsetDateTime,
    },
    /// `clean` removed these files.
    Removed {
        /// the files removed
        files: Vec<String>,
    },
}

/// Runs `targets` in `dir`, in order, like `make -f Makefile.selfsigned.mk TARGET...`.
///
/// Targets between two `clean`s are planned together and written in one transaction: if anything
/// fails, nothing of that group is written. `progress` hears about key generation.
pub fn run(
    dir: &Path,
    settings: &Settings,
    targets: &[Target],
    force: bool,
    now: OffsetDateTime,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<Outcome>, CertsError> {
    let checked = settings.check()?;
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CertsError::NotAFolder {
                path: dir.to_owned(),
            });
        }
        // A missing working folder is made, as `mkdir -p` would; its parent must be writable.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|source| CertsError::Io {
                path: dir.to_owned(),
                what: "cannot create folder",
                source,
            })?;
        }
        Err(source) => {
            return Err(CertsError::Io {
                path: dir.to_owned(),
                what: "cannot use folder",
                source,
            });
        }
    }
    let mut outcomes = Vec::new();
    for group in targets.split_inclusive(|t| *t == Target::Clean) {
        let (work, clean) = match group.split_last() {
            Some((Target::Clean, rest)) => (rest, true),
            _ => (group, false),
        };
        if !work.is_empty() {
            let plan = Plan::make(dir, settings, &checked, work, force, now)?;
            outcomes.extend(plan.execute(dir, settings, &checked, now, progress)?);
        }
        if clean {
            outcomes.push(clean_root(dir)?);
        }
    }
    Ok(outcomes)
}

fn clean_root(dir: &Path) -> Result<Outcome, CertsError> {
    let mut removed = Vec::new();
    for name in CLEAN_FILES {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push((*name).to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertsError::Io {
                    path,
                    what: "cannot remove",
                    source,
                });
            }
        }
    }
    Ok(Outcome {
        target: Target::Clean,
        status: Status::Removed { files: removed },
    })
}

/// The root as found on disk.
enum RootOnDisk {
    Absent,
    Usable {
        signer: Box<CaSigner>,
        cert_pem: Vec<u8>,
    },
}

fn read_root(dir: &Path, now: OffsetDateTime) -> Result<RootOnDisk, CertsError> {
    let cert_path = dir.join(ROOT_CERT);
    let key_path = dir.join(ROOT_KEY);
    let cert = read_optional(&cert_path)?;
    let key = read_optional(&key_path)?;
    let (cert_pem, key_pem) = match (cert, key) {
        (None, None) => return Ok(RootOnDisk::Absent),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(CertsError::Existing {
                reason: format!("{ROOT_CERT} exists but {ROOT_KEY} is missing"),
                hint: "restore the key, or run `meshca certs --force root-ca` to make a new root"
                    .to_owned(),
            });
        }
        (None, Some(_)) => {
            return Err(CertsError::Existing {
                reason: format!("{ROOT_KEY} exists but {ROOT_CERT} is missing"),
                hint: "restore the certificate, or run `meshca certs --force root-ca` to make a new root".to_owned(),
            });
        }
    };
    let cert = Certificate::one_from_pem(&cert_pem, ROOT_CERT)?;
    let key = PrivateKey::from_pem(&key_pem, ROOT_KEY)?;
    let signer = CaSigner::new(cert, key, ROOT_KEY)?;
    signer.cert().check_validity(now)?;
    Ok(RootOnDisk::Usable {
        signer: Box::new(signer),
        cert_pem,
    })
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CertsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertsError::Io {
            path: path.to_owned(),
            what: "cannot read",
            source,
        }),
    }
}

enum RootPlan {
    /// Use the root on disk.
    Keep {
        signer: Box<CaSigner>,
        cert_pem: Vec<u8>,
        report: bool,
    },
    /// Make a new root valid over this window.
    Make {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        report: bool,
    },
}

impl RootPlan {
    fn not_after(&self) -> OffsetDateTime {
        match self {
            RootPlan::Keep { signer, .. } => signer.cert().not_after(),
            RootPlan::Make { not_after, .. } => *not_after,
        }
    }
}

struct FolderPlan {
    target: Target,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    workload: Option<(OffsetDateTime, OffsetDateTime, SpiffeId)>,
    notes: Vec<String>,
}

enum FolderDecision {
    Make(FolderPlan),
    UpToDate {
        target: Target,
        not_after: OffsetDateTime,
    },
}

struct Plan {
    root: Option<RootPlan>,
    folders: Vec<FolderDecision>,
}

impl Plan {
    fn make(
        dir: &Path,
        settings: &Settings,
        checked: &Checked,
        targets: &[Target],
        force: bool,
        now: OffsetDateTime,
    ) -> Result<Self, CertsError> {
        let mut seen: BTreeMap<&str, &Target> = BTreeMap::new();
        let mut unique: Vec<&Target> = Vec::new();
        for t in targets {
            if unique.contains(&t) {
                continue;
            }
            if let Some(folder) = t.folder()
                && let Some(other) = seen.insert(folder, t)
            {
                return Err(CertsError::BadTarget {
                    target: t.to_string(),
                    reason: format!("folder {folder}/ is also the output of {other}"),
                });
            }
            unique.push(t);
        }
        let wants_root = unique.contains(&&Target::RootCa);
        let needs_root = wants_root || unique.iter().any(|t| t.folder().is_some());
        let on_disk = if wants_root && force {
            // The root is being replaced: whatever is there now does not matter.
            RootOnDisk::Absent
        } else if needs_root {
            read_root(dir, now).map_err(|e| match e {
                CertsError::Pki(p) => CertsError::Existing {
                    reason: p.to_string(),
                    hint: "fix it, or run `meshca certs --force root-ca` to make a new root (intermediates made from the old one stop verifying)".to_owned(),
                },
                other => other,
            })?
        } else {
            RootOnDisk::Absent
        };
        let root = match on_disk {
            RootOnDisk::Usable { signer, cert_pem } => Some(RootPlan::Keep {
                signer,
                cert_pem,
                report: wants_root,
            }),
            RootOnDisk::Absent if needs_root => {
                let (not_before, not_after) = days_from(now, settings.rootca_days, "ROOTCA_DAYS")?;
                Some(RootPlan::Make {
                    not_before,
                    not_after,
                    report: wants_root,
                })
            }
            RootOnDisk::Absent => None,
        };
        let mut folders = Vec::new();
        for t in unique.iter().filter(|t| t.folder().is_some()) {
            // A root exists in the plan whenever a folder target does.
            let Some(root) = root.as_ref() else { continue };
            folders.push(plan_folder(dir, settings, checked, t, root, force, now)?);
        }
        Ok(Plan { root, folders })
    }

    fn execute(
        self,
        dir: &Path,
        settings: &Settings,
        checked: &Checked,
        now: OffsetDateTime,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Vec<Outcome>, CertsError> {
        // Every key this plan needs, in a fixed order: root first, then per folder the
        // intermediate and, for -certs targets, the workload key.
        let mut jobs: Vec<KeyType> = Vec::new();
        if matches!(self.root, Some(RootPlan::Make { .. })) {
            jobs.push(checked.root_key);
        }
        for f in &self.folders {
            if let FolderDecision::Make(p) = f {
                jobs.push(checked.intermediate_key);
                if p.workload.is_some() {
                    jobs.push(checked.workload_key);
                }
            }
        }
        let mut keys = generate_keys(&jobs, progress)?.into_iter();
        let mut next_key = || {
            // generate_keys returns exactly one key per job, consumed in the same order.
            keys.next().ok_or_else(|| PkiError::Crypto {
                what: "key generation".to_owned(),
                reason: "fewer keys than planned".to_owned(),
            })
        };

        let mut tx = Transaction::new();
        let mut outcomes = Vec::new();
        let (root_signer, root_pem) = match self.root {
            Some(RootPlan::Keep {
                signer,
                cert_pem,
                report,
            }) => {
                if report {
                    outcomes.push(Outcome {
                        target: Target::RootCa,
                        status: Status::UpToDate {
                            not_after: signer.cert().not_after(),
                        },
                    });
                }
                (signer, cert_pem)
            }
            Some(RootPlan::Make {
                not_before,
                not_after,
                report,
            }) => {
                let key = next_key()?;
                let profile = CaProfile {
                    subject: Subject {
                        organization: Some(settings.rootca_org.clone()),
                        common_name: Some(settings.rootca_cn.clone()),
                        locality: None,
                    },
                    not_before,
                    not_after,
                    path_len: None,
                    dns_names: Vec::new(),
                };
                let cert = profile.self_signed(&key, ROOT_CERT)?;
                let cert_pem = cert.pem().into_bytes();
                tx.write(
                    dir,
                    vec![
                        FileSpec::private(ROOT_KEY, key.to_pkcs8_pem()),
                        FileSpec::public(ROOT_CERT, cert_pem.clone()),
                    ],
                );
                let key_type = key.key_type();
                let signer = CaSigner::new(cert, key, ROOT_KEY)?;
                outcomes.push(Outcome {
                    target: Target::RootCa,
                    status: Status::Generated {
                        files: vec![ROOT_CERT.to_owned(), ROOT_KEY.to_owned()],
                        key_type,
                        not_after,
                        notes: if report {
                            Vec::new()
                        } else {
                            vec!["made because it was missing".to_owned()]
                        },
                    },
                });
                (Box::new(signer), cert_pem)
            }
            None => return Ok(outcomes),
        };

        for decision in self.folders {
            let plan = match decision {
                FolderDecision::UpToDate { target, not_after } => {
                    outcomes.push(Outcome {
                        target,
                        status: Status::UpToDate { not_after },
                    });
                    continue;
                }
                FolderDecision::Make(p) => p,
            };
            let name = plan.target.folder().unwrap_or_default().to_owned();
            let at = |f: &str| format!("{name}/{f}");
            let key = next_key()?;
            let profile = CaProfile {
                subject: Subject {
                    organization: Some(settings.intermediate_org.clone()),
                    common_name: Some(settings.intermediate_cn.clone()),
                    locality: Some(name.clone()),
                },
                not_before: plan.not_before,
                not_after: plan.not_after,
                path_len: Some(0),
                dns_names: if settings.intermediate_san_dns.is_empty() {
                    Vec::new()
                } else {
                    vec![settings.intermediate_san_dns.clone()]
                },
            };
            let ca_cert = root_signer.issue_ca(&profile, &key, &at(CA_CERT))?;
            let ca_pem = ca_cert.pem();
            let chain_pem = format!("{ca_pem}{}", String::from_utf8_lossy(&root_pem));
            let mut files = vec![
                FileSpec::public(CA_CERT, ca_pem.clone()),
                FileSpec::private(CA_KEY, key.to_pkcs8_pem()),
                FileSpec::public(CERT_CHAIN, chain_pem.clone()),
                FileSpec::public(ROOT_CERT, root_pem.clone()),
            ];
            // Prove before use: the bundle as it will be written must load the way istiod
            // loads it.
            let bundle_files = BTreeMap::from([
                (CA_CERT.to_owned(), ca_pem.clone().into_bytes()),
                (CA_KEY.to_owned(), key.to_pkcs8_pem().into_bytes()),
                (CERT_CHAIN.to_owned(), chain_pem.into_bytes()),
                (ROOT_CERT.to_owned(), root_pem.clone()),
            ]);
            let key_type = key.key_type();
            CacertsBundle::from_files(&bundle_files, &name, now)?;
            if let Some((wl_nb, wl_na, id)) = &plan.workload {
                let wl_key = next_key()?;
                let signer = CaSigner::new(ca_cert.clone(), key, &at(CA_KEY))?;
                let wl = WorkloadProfile {
                    subject: Subject {
                        organization: Some(settings.intermediate_org.clone()),
                        common_name: Some(settings.workload_cn.clone()),
                        locality: Some(name.clone()),
                    },
                    not_before: *wl_nb,
                    not_after: *wl_na,
                    uris: vec![id.to_string()],
                    dns_names: Vec::new(),
                    ips: Vec::new(),
                    key_usage_critical: false,
                };
                let wl_cert = signer.issue_workload(&wl, &wl_key, &at(WORKLOAD_CERT))?;
                verify_path(
                    &wl_cert,
                    std::slice::from_ref(&ca_cert),
                    std::slice::from_ref(root_signer.cert()),
                    now,
                )?;
                let wl_chain = format!(
                    "{}{}{}",
                    wl_cert.pem(),
                    ca_pem,
                    String::from_utf8_lossy(&root_pem)
                );
                files.push(FileSpec::private(WORKLOAD_KEY, wl_key.to_pkcs8_pem()));
                files.push(FileSpec::public(WORKLOAD_CERT, wl_cert.pem()));
                files.push(FileSpec::public(WORKLOAD_CHAIN, wl_chain));
            }
            let written: Vec<String> = files.iter().map(|f| at(f.name())).collect();
            tx.write(dir.join(&name), files);
            outcomes.push(Outcome {
                target: plan.target,
                status: Status::Generated {
                    files: written,
                    key_type,
                    not_after: plan.not_after,
                    notes: plan.notes,
                },
            });
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_folder(
    dir: &Path,
    settings: &Settings,
    checked: &Checked,
    target: &Target,
    root: &RootPlan,
    force: bool,
    now: OffsetDateTime,
) -> Result<FolderDecision, CertsError> {
    let name = target.folder().unwrap_or_default();
    let with_workload = matches!(target, Target::Certs(_));
    let folder = dir.join(name);
    let mut outputs = vec![CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT];
    if with_workload {
        outputs.extend([WORKLOAD_KEY, WORKLOAD_CERT, WORKLOAD_CHAIN]);
    }
    let present = present_outputs(&folder, &outputs)?;
    let hint = format!("run with --force to regenerate {name}/ (its keys are replaced)");
    if !present.is_empty() && !force {
        let RootPlan::Keep { signer, .. } = root else {
            return Err(CertsError::Existing {
                reason: format!(
                    "{name}/ holds certificates from a root that is missing or being replaced; they would not chain to the new root"
                ),
                hint,
            });
        };
        if present.len() < outputs.len() {
            let missing: Vec<&str> = outputs
                .iter()
                .copied()
                .filter(|o| !present.contains(o))
                .collect();
            return Err(CertsError::Existing {
                reason: format!("{name}/ is incomplete: {} missing", missing.join(", ")),
                hint,
            });
        }
        let not_after =
            check_existing(&folder, name, signer.cert(), with_workload, now).map_err(|e| {
                CertsError::Existing {
                    reason: e.to_string(),
                    hint: hint.clone(),
                }
            })?;
        return Ok(FolderDecision::UpToDate {
            target: target.clone(),
            not_after,
        });
    }
    let mut notes = Vec::new();
    let root_end = root.not_after();
    let (not_before, not_after) = lifetime(
        now,
        settings.intermediate_days,
        DEFAULT_INTERMEDIATE_DAYS,
        "INTERMEDIATE_DAYS",
        &format!("{name}/{CA_CERT}"),
        ROOT_CERT,
        root_end,
        &mut notes,
    )?;
    let workload = if with_workload {
        let (nb, na) = lifetime(
            now,
            settings.workload_days,
            DEFAULT_WORKLOAD_DAYS,
            "WORKLOAD_DAYS",
            &format!("{name}/{WORKLOAD_CERT}"),
            &format!("{name}/{CA_CERT}"),
            not_after,
            &mut notes,
        )?;
        let id = SpiffeId::workload(&checked.trust_domain, name, &settings.service_account)?;
        Some((nb, na, id))
    } else {
        None
    };
    Ok(FolderDecision::Make(FolderPlan {
        target: target.clone(),
        not_before,
        not_after,
        workload,
        notes,
    }))
}

/// The validity of a certificate made now: `days` if given (refused if it outlives the issuer),
/// else `default_days` shortened to the issuer's end with a note.
#[allow(clippy::too_many_arguments)]
fn lifetime(
    now: OffsetDateTime,
    days: Option<i64>,
    default_days: i64,
    field: &str,
    child: &str,
    issuer: &str,
    issuer_not_after: OffsetDateTime,
    notes: &mut Vec<String>,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let (nb, na) = days_from(now, days.unwrap_or(default_days), field)?;
    if na <= issuer_not_after {
        return Ok((nb, na));
    }
    if days.is_some() {
        return Err(PkiError::OutlivesIssuer {
            child: child.to_owned(),
            issuer: issuer.to_owned(),
            field: field.to_owned(),
            child_not_after: na,
            issuer_not_after,
        });
    }
    notes.push(format!(
        "valid until {} (the end of {issuer}) instead of {default_days} days",
        meshca_pki::error::show_time(issuer_not_after)
    ));
    Ok((nb, issuer_not_after))
}

fn present_outputs<'a>(folder: &Path, outputs: &[&'a str]) -> Result<Vec<&'a str>, CertsError> {
    match fs::symlink_metadata(folder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CertsError::Io {
                path: folder.to_owned(),
                what: "cannot read",
                source,
            });
        }
        Ok(_) if !folder.is_dir() => {
            return Err(CertsError::NotAFolder {
                path: folder.to_owned(),
            });
        }
        Ok(_) => {}
    }
    Ok(outputs
        .iter()
        .copied()
        .filter(|o| folder.join(o).exists())
        .collect())
}

/// Checks a complete existing folder against the current root; returns the intermediate's end.
fn check_existing(
    folder: &Path,
    name: &str,
    root: &Certificate,
    with_workload: bool,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, CertsError> {
    let files = meshca_store::read_bundle_dir(folder)?;
    let bundle = CacertsBundle::from_files(&files, name, now)?;
    if bundle.path().root() != root {
        return Err(PkiError::NotSignedBy {
            cert: format!("{name}/{CA_CERT}"),
            issuer: ROOT_CERT.to_owned(),
            reason: "it chains to a different root".to_owned(),
        }
        .into());
    }
    if with_workload {
        let at = |f: &str| format!("{name}/{f}");
        let read = |f: &str| -> Result<Vec<u8>, CertsError> {
            let p: PathBuf = folder.join(f);
            fs::read(&p).map_err(|source| CertsError::Io {
                path: p,
                what: "cannot read",
                source,
            })
        };
        let cert = Certificate::one_from_pem(&read(WORKLOAD_CERT)?, &at(WORKLOAD_CERT))?;
        let key = PrivateKey::from_pem(&read(WORKLOAD_KEY)?, &at(WORKLOAD_KEY))?;
        if !cert.matches_key(&key) {
            return Err(PkiError::KeyMismatch {
                key: at(WORKLOAD_KEY),
                cert: at(WORKLOAD_CERT),
            }
            .into());
        }
        verify_path(
            &cert,
            std::slice::from_ref(bundle.signer().cert()),
            bundle.roots(),
            now,
        )?;
    }
    Ok(bundle.signer().cert().not_after())
}

/// Generates one key per job, spreading the work over all cores.
fn generate_keys(
    jobs: &[KeyType],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<PrivateKey>, PkiError> {
    let total = jobs.len();
    if total == 0 {
        return Ok(Vec::new());
    }
    let slow = jobs.iter().filter(|k| k.is_slow_to_generate()).count();
    progress(Progress {
        done: 0,
        total,
        slow,
    });
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(total);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<PrivateKey, PkiError>>>> =
        Mutex::new((0..total).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let key = PrivateKey::generate(jobs[i]);
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(key);
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(Progress {
                        done: d,
                        total,
                        slow,
                    });
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(PkiError::Crypto {
                    what: "key generation".to_owned(),
                    reason: "a worker stopped".to_owned(),
                })
            })
        })
        .collect()
}
