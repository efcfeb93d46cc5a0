//! Flag parsing shared by the subcommands.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{EnumValueParser, PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use clap::ValueEnum;

/// Value parser of a flag taking one of a library enum's names (its `clap::ValueEnum`, whose
/// names are the serde names). Unlike clap's own parser its error names the flag and the value
/// together, `--schedule zigzag: expected one of cosine, linear, constant, wsd`, the form every
/// escale error uses.
#[derive(Clone)]
pub struct Choice<T>(PhantomData<T>);

pub fn choice<T>() -> Choice<T> {
    Choice(PhantomData)
}

impl<T: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        EnumValueParser::<T>::new().parse_ref(cmd, arg, value).map_err(|_| {
            let flag = arg.and_then(|a| a.get_long()).map(|long| format!("--{long} ")).unwrap_or_default();
            let message = format!("{flag}{}: expected one of {}\n", value.to_string_lossy(), visible_names::<T>().join(", "));
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
