//! Flag parsing shared by the subcommands.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{EnumValueParser, PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::ValueEnum;
use escale_util::size::ByteSize;

/// Value parser of a flag taking one of a library enum's names (its `clap::ValueEnum`, whose
/// names are the serde names): the one enum parser of every subcommand. Unlike clap's own parser
/// its error names the flag, the value and what was expected together,
/// `--schedule zigzag: unknown schedule `zigzag`, expected one of cosine, linear, constant, wsd`,
/// the form every escale error uses.
#[derive(Clone)]
pub struct Choice<T>(PhantomData<T>);

pub fn choice<T>() -> Choice<T> {
    Choice(PhantomData)
}

impl<T: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        EnumValueParser::<T>::new().parse_ref(cmd, arg, value).map_err(|_| {
            let value = value.to_string_lossy();
            let long = arg.and_then(|a| a.get_long());
            let flag = long.map(|long| format!("--{long} ")).unwrap_or_default();
            let what = long.map_or_else(|| "value".to_string(), |long| long.replace('-', " "));
            let expected = visible_names::<T>().join(", ");
            let message = format!("{flag}{value}: unknown {what} `{value}`, expected one of {expected}\n");
            clap::Error::raw(ErrorKind::InvalidValue, message).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::value_variants().iter().filter_map(ValueEnum::to_possible_value)))
    }
}

/// The names a user may type (aliases aside), in declaration order.
fn visible_names<T: ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_owned())
        .collect()
}

/// Value parser of a flag taking a positive byte size (`5GB`, `500MB`, `512KiB`, bytes); its error
/// names the flag and the value, like [`choice`]'s.
#[derive(Clone)]
pub struct Size;

pub fn size() -> Size {
    Size
}

impl TypedValueParser for Size {
    type Value = ByteSize;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<ByteSize, clap::Error> {
        let text = value.to_string_lossy();
        let problem = match text.parse::<ByteSize>() {
            Ok(ByteSize(0)) => "a size must be positive".to_string(),
            Ok(size) => return Ok(size),
            Err(e) => e,
        };
        let flag = arg.and_then(|a| a.get_long()).map(|long| format!("--{long} ")).unwrap_or_default();
        Err(clap::Error::raw(ErrorKind::InvalidValue, format!("{flag}{text}: {problem}\n")).with_cmd(cmd))
    }
}
