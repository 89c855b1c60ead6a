//! Loki's push protocol, defined once: the wire types and the strict decoder ([`wire`]) that the
//! test receiver and tools use, the borrowed encoder ([`encode`]) the shipper's sink writes every
//! body with, and label-set text ([`labels`]).

pub mod encode;
pub mod labels;
pub mod wire;

/// The push path, as in Loki.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// The body format of a push request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON, gzip-compressed (`Content-Encoding: gzip`).
    #[default]
    Json,
    /// Protobuf, snappy-compressed (`Content-Type: application/x-protobuf`).
    Protobuf,
}

/// An encoding name that is neither `json` nor `protobuf`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown loki encoding {0:?}: use \"json\" or \"protobuf\"")]
pub struct UnknownEncoding(pub String);

impl Encoding {
    /// The name configs use: `json` or `protobuf`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Encoding {
    type Err = UnknownEncoding;

    /// Parses a config's `encoding`: `json` or `protobuf`.
    ///
    /// # Examples
    /// ```
    /// use diagtool_model::loki::Encoding;
    /// assert_eq!("protobuf".parse::<Encoding>(), Ok(Encoding::Protobuf));
    /// assert!("snappy".parse::<Encoding>().unwrap_err().to_string().contains("\"json\""));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "protobuf" => Ok(Self::Protobuf),
            other => Err(UnknownEncoding(other.to_owned())),
        }
    }
}
