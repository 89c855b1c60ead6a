//! The pprof `profile.proto` format: build it from weighted stacks, read it back, fold it.
//!
//! Both the embedded probe (task and CPU profiles) and the CLI (flamegraphs from a saved profile)
//! speak this format, so it lives here once. The messages are hand-written prost structs with the
//! field numbers of Google's `profile.proto`, so the output is readable by `go tool pprof`.
//!
//! Conventions kept throughout:
//! - stacks are given and returned **root first** (outermost frame first, leaf last), like the
//!   traces in [`crate::Dump`] and like inferno's folded lines; the protobuf itself stores
//!   them leaf first, as `profile.proto` requires, and the conversion happens only here;
//! - `string_table[0]` is always the empty string;
//! - identical frames share one `Location` and one `Function`.

use std::collections::HashMap;
use std::io::{Read, Write};

use prost::Message;

/// A whole profile (`perftools.profiles.Profile`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each value of a sample measures (for example `samples/count`, `cpu/nanoseconds`).
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The measured stacks.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Binaries mapped into the process (left empty: frames come symbolised).
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code locations, referenced by id from samples.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions, referenced by id from lines.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string of the profile; other messages hold indexes into it. Entry 0 is `""`.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regexp (string index) of frames to drop.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regexp (string index) of frames to keep.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When the profile was collected, in nanoseconds since the Unix epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long the collection lasted, in nanoseconds.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// The kind of events between samples (for example `cpu/nanoseconds`).
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The number of events between samples.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indexes).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Index of the sample type shown by default (string index of its type name).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A sample type or period type: two string indexes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// String index of the type (`samples`, `cpu`, `tasks`).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// String index of the unit (`count`, `nanoseconds`).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One stack and its values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, **leaf first**.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile::sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Extra labels (for example a spawn site).
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A key with a string or numeric value, attached to a sample.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// String index of the key.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String index of the value (0 when numeric).
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// String index of the numeric value's unit.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A binary mapped into the address space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Start of the mapped range.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// End of the mapped range.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// Offset in the file.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// String index of the file name.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// String index of the build id.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Whether function names are resolved.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Whether file names are resolved.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Whether line numbers are resolved.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Whether inline frames are resolved.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// A code location: one or more lines (several when inlined, callee first).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mapping id, 0 when unknown.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The instruction address, 0 when unknown.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// The source lines at this location.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Whether several frames were folded into this location.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and line.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// The function id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Line number, 0 when unknown.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// Column number, 0 when unknown.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// String index of the readable name.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// String index of the mangled name.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// String index of the source file.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// First line of the function, 0 when unknown.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// A profile that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    /// The gzip layer is broken.
    #[error("not a readable gzip stream: {0}; expected a pprof profile (.pb.gz)")]
    Gzip(#[source] std::io::Error),
    /// The protobuf layer is broken.
    #[error("not a pprof protobuf: {0}; expected a pprof profile (.pb.gz)")]
    Protobuf(#[source] prost::DecodeError),
}

/// One frame of a stack handed to [`ProfileBuilder::add`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Frame {
    /// The function's readable name.
    pub function: String,
    /// The source file, when known.
    pub file: Option<String>,
    /// The line, when known.
    pub line: Option<u32>,
}

impl Frame {
    /// A frame known only by its function name.
    pub fn named(function: impl Into<String>) -> Self {
        Frame {
            function: function.into(),
            file: None,
            line: None,
        }
    }

    /// A frame with its source file and line.
    pub fn at(function: impl Into<String>, file: impl Into<String>, line: u32) -> Self {
        Frame {
            function: function.into(),
            file: Some(file.into()),
            line: Some(line),
        }
    }
}

/// Builds a [`Profile`] from weighted stacks, interning strings, functions and locations.
///
/// # Examples
/// ```
/// use diagtool_model::pprof::{Frame, ProfileBuilder, decode, to_folded};
///
/// let mut builder = ProfileBuilder::new(&[("tasks", "count")]);
/// builder.add(&[Frame::named("main"), Frame::named("park")], &[16]);
/// let gz = builder.encode_gzip();
/// let profile = decode(&gz).unwrap();
/// assert_eq!(to_folded(&profile), "main;park 16\n");
/// ```
#[derive(Debug)]
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, Option<String>), u64>,
    locations: HashMap<Frame, u64>,
    samples: HashMap<Vec<u64>, usize>,
}

impl ProfileBuilder {
    /// A builder whose samples carry one value per `(type, unit)` given, in that order
    /// (for example `[("samples", "count"), ("cpu", "nanoseconds")]`).
    pub fn new(sample_types: &[(&str, &str)]) -> Self {
        let mut builder = ProfileBuilder {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            samples: HashMap::new(),
        };
        builder.intern("");
        for (ty, unit) in sample_types {
            let value_type = builder.value_type(ty, unit);
            builder.profile.sample_type.push(value_type);
        }
        builder
    }

    /// Sets the sampling period (for a CPU profile at 99 Hz: `("cpu", "nanoseconds")`, 10_101_010).
    pub fn period(mut self, ty: &str, unit: &str, period: i64) -> Self {
        self.profile.period_type = Some(self.value_type(ty, unit));
        self.profile.period = period;
        self
    }

    /// Sets when collection started and how long it lasted, in nanoseconds.
    pub fn timing(mut self, time_nanos: i64, duration_nanos: i64) -> Self {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
        self
    }

    /// Names the profiled program's binary (a mapping that covers every location, marked as
    /// already symbolized), so `go tool pprof` shows its name and neither warns that the main
    /// binary's name is missing nor tries to symbolize the frames again.
    pub fn main_binary(mut self, filename: &str) -> Self {
        let filename = self.intern(filename);
        self.profile.mapping = vec![Mapping {
            id: MAIN_MAPPING,
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        }];
        for location in &mut self.profile.location {
            location.mapping_id = MAIN_MAPPING;
        }
        self
    }

    /// Names the sample type `go tool pprof` shows when none is asked (`-sample_index`), for
    /// example `inuse_space` in a heap profile whose first type is `inuse_objects`. Without it,
    /// readers show the last sample type.
    pub fn default_sample_type(mut self, ty: &str) -> Self {
        self.profile.default_sample_type = self.intern(ty);
        self
    }

    /// Adds a free-form comment (shown by `go tool pprof -comments`).
    pub fn comment(mut self, text: &str) -> Self {
        let index = self.intern(text);
        self.profile.comment.push(index);
        self
    }

    /// Adds a stack, **root first**, with one value per sample type. Adding the same stack again
    /// adds the values to the existing sample. Missing values count as 0, extra ones are ignored.
    pub fn add(&mut self, stack_root_first: &[Frame], values: &[i64]) {
        let ids: Vec<u64> = stack_root_first
            .iter()
            .rev()
            .map(|frame| self.location(frame))
            .collect();
        let width = self.profile.sample_type.len();
        let index = match self.samples.get(&ids) {
            Some(&index) => index,
            None => {
                self.profile.sample.push(Sample {
                    location_id: ids.clone(),
                    value: vec![0; width],
                    label: Vec::new(),
                });
                let index = self.profile.sample.len() - 1;
                self.samples.insert(ids, index);
                index
            }
        };
        let sample = &mut self.profile.sample[index];
        for (slot, value) in sample.value.iter_mut().zip(values) {
            *slot += value;
        }
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }

    /// The finished profile as a gzipped protobuf (`.pb.gz`), as `go tool pprof` reads it.
    pub fn encode_gzip(self) -> Vec<u8> {
        encode_gzip(&self.build())
    }

    fn intern(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.intern(ty),
            unit: self.intern(unit),
        }
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let key = (frame.function.clone(), frame.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let name = self.intern(&frame.function);
        let filename = frame.file.as_deref().map_or(0, |file| self.intern(file));
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let function_id = self.function(frame);
        let id = self.profile.location.len() as u64 + 1;
        let mapping_id = if self.profile.mapping.is_empty() {
            0
        } else {
            MAIN_MAPPING
        };
        self.profile.location.push(Location {
            id,
            mapping_id,
            address: 0,
            line: vec![Line {
                function_id,
                line: frame.line.map_or(0, i64::from),
                column: 0,
            }],
            is_folded: false,
        });
        self.locations.insert(frame.clone(), id);
        id
    }
}

/// The id of the one mapping [`ProfileBuilder::main_binary`] adds.
const MAIN_MAPPING: u64 = 1;

/// The running program's path, for [`ProfileBuilder::main_binary`] (Linux appends ` (deleted)`
/// when the file was replaced since start, which then shows in `go tool pprof`'s output too).
pub fn current_binary() -> String {
    std::env::current_exe().map_or_else(
        |_| "unknown".to_owned(),
        |path| path.to_string_lossy().into_owned(),
    )
}

/// Encodes a profile as a gzipped protobuf (`.pb.gz`).
pub fn encode_gzip(profile: &Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&raw);
    encoder.finish().unwrap_or_default()
}

/// Decodes a profile, gzipped (as served and saved) or raw protobuf.
pub fn decode(bytes: &[u8]) -> Result<Profile, PprofError> {
    let raw;
    let body = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(PprofError::Gzip)?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    Profile::decode(body).map_err(PprofError::Protobuf)
}

/// The stacks of a profile, **root first**, as function names, with their values.
///
/// A location with inlined lines yields one frame per line, caller before callee. Unknown ids and
/// string indexes yield `"??"` rather than an error, so a partly damaged profile still shows.
pub fn stacks(profile: &Profile) -> Vec<(Vec<String>, Vec<i64>)> {
    let name_of = |index: i64| -> String {
        usize::try_from(index)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "??".to_owned())
    };
    let functions: HashMap<u64, String> = profile
        .function
        .iter()
        .map(|f| (f.id, name_of(f.name)))
        .collect();
    let locations: HashMap<u64, &Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    profile
        .sample
        .iter()
        .map(|sample| {
            let mut frames = Vec::new();
            for id in sample.location_id.iter().rev() {
                match locations.get(id) {
                    // Lines are callee first within a location; root-first order reverses them.
                    Some(location) if !location.line.is_empty() => {
                        for line in location.line.iter().rev() {
                            frames.push(
                                functions
                                    .get(&line.function_id)
                                    .cloned()
                                    .unwrap_or_else(|| "??".to_owned()),
                            );
                        }
                    }
                    Some(location) => frames.push(format!("{:#x}", location.address)),
                    None => frames.push("??".to_owned()),
                }
            }
            (frames, sample.value.clone())
        })
        .collect()
}

/// The profile in inferno's folded format (`root;...;leaf VALUE`, one line per distinct stack,
/// sorted), weighted by the first sample type. See [`to_folded_with`] for another value.
pub fn to_folded(profile: &Profile) -> String {
    to_folded_with(profile, 0)
}

/// Like [`to_folded`], weighted by the sample value at `value_index`. Stacks with a zero value
/// are left out; `;` and line breaks inside names are replaced so every line stays parseable.
pub fn to_folded_with(profile: &Profile, value_index: usize) -> String {
    let mut folded: HashMap<String, i64> = HashMap::new();
    for (frames, values) in stacks(profile) {
        let value = values.get(value_index).copied().unwrap_or(0);
        if value == 0 {
            continue;
        }
        let line = frames
            .iter()
            .map(|frame| frame.replace(';', ",").replace(['\n', '\r'], " "))
            .collect::<Vec<_>>()
            .join(";");
        *folded.entry(line).or_insert(0) += value;
    }
    let mut lines: Vec<(String, i64)> = folded.into_iter().collect();
    lines.sort();
    let mut out = String::new();
    for (stack, value) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}

/// The readable name of sample type `index` (`"tasks/count"`), if present.
pub fn sample_type_name(profile: &Profile, index: usize) -> Option<String> {
    let value_type = profile.sample_type.get(index)?;
    let get = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
    };
    Some(format!(
        "{}/{}",
        get(value_type.r#type)?,
        get(value_type.unit)?
    ))
}

#[cfg(test)]
#[path = "pprof_tests.rs"]
mod tests;
