//! Offsets of kernel struct members, from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux). The splice verdict reads a few kernel fields that no BPF
//! context exposes (the TCP sequence number of an skb, a socket's copied_seq); their
//! offsets change between kernel builds, so the loader looks them up here and writes
//! them into the program before loading it.
//!
//! A reader of just what that needs (the header, the type records' sizes, struct
//! members), after include/uapi/linux/btf.h and Documentation/bpf/btf.rst. aya-obj
//! parses BTF too but keeps struct members crate-private, and the BTF crates that
//! expose them are LGPL-licensed.
use std::{collections::HashMap, path::Path};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;
const KIND_MAX: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF: {0}")]
    Format(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("{0}.{1} is a bit field")]
    BitField(String, String),
}

/// The structs of one BTF blob: name → (kind_flag, members as (name, bit offset)).
pub struct Btf {
    structs: HashMap<String, (bool, Vec<(String, u32)>)>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |off: usize| -> Result<u16, BtfError> {
            let b = data
                .get(off..off + 2)
                .ok_or(BtfError::Format("truncated"))?;
            Ok(u16::from_ne_bytes([b[0], b[1]]))
        };
        let u32_at = |off: usize| -> Result<u32, BtfError> {
            let b = data
                .get(off..off + 4)
                .ok_or(BtfError::Format("truncated"))?;
            Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0)? != MAGIC {
            return Err(BtfError::Format("bad magic (or foreign byte order)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let str_off = hdr_len + u32_at(16)? as usize;
        let str_len = u32_at(20)? as usize;
        let strings = data
            .get(str_off..str_off + str_len)
            .ok_or(BtfError::Format("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let end = type_off + type_len;
        if end > data.len() {
            return Err(BtfError::Format("type section out of bounds"));
        }
        let mut structs = HashMap::new();
        let mut at = type_off;
        while at < end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    if kind == KIND_STRUCT && name_off != 0 {
                        let mut members = Vec::with_capacity(vlen);
                        for i in 0..vlen {
                            let m = at + i * 12;
                            members.push((name(u32_at(m)?), u32_at(m + 8)?));
                        }
                        structs
                            .entry(name(name_off))
                            .or_insert((kind_flag, members));
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                k if k <= KIND_MAX => 0,
                _ => return Err(BtfError::Format("unknown type kind")),
            };
            at += extra;
        }
        Ok(Btf { structs })
    }

    /// Byte offset of a top-level, byte-aligned `member` of `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let (kind_flag, members) = self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        let &(_, raw) = members
            .iter()
            .find(|(n, _)| n == member)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))?;
        // With kind_flag set, the top 8 bits hold a bit-field size.
        let (bits, size) = if *kind_flag {
            (raw & 0x00ff_ffff, raw >> 24)
        } else {
            (raw, 0)
        };
        if size != 0 || bits % 8 != 0 {
            return Err(BtfError::BitField(name.into(), member.into()));
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_members_the_splice_verdict_reads() {
        let Ok(btf) = Btf::kernel() else {
            eprintln!("SKIP: no /sys/kernel/btf/vmlinux on this machine");
            return;
        };
        let cb = btf.member_offset("sk_buff", "cb").unwrap();
        let sk = btf.member_offset("sk_buff", "sk").unwrap();
        let copied = btf.member_offset("tcp_sock", "copied_seq").unwrap();
        // struct sk_buff begins with two list pointers and a device pointer (or their
        // union), then sk; cb comes after sk and a timestamp: all within the first cache
        // lines. copied_seq sits well inside struct tcp_sock (after inet_connection_sock).
        assert!(sk >= 16 && sk < cb && cb <= 128, "sk {sk} cb {cb}");
        assert!(copied > 512 && copied < 4096, "copied_seq {copied}");
        assert_eq!(btf.member_offset("tcp_skb_cb", "seq").unwrap(), 0);
        assert_eq!(btf.member_offset("tcp_skb_cb", "end_seq").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("sk_buff", "no_such_member"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(matches!(Btf::parse(b""), Err(BtfError::Format(_))));
        assert!(matches!(Btf::parse(&[0u8; 64]), Err(BtfError::Format(_))));
        // Right magic, header pointing past the end.
        let mut h = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&1000u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(Btf::parse(&h), Err(BtfError::Format(_))));
    }
}
