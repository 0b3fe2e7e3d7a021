//! The standard library: .ptl files under stdlib/, compiled into the binary, imported as `std/NAME.ptl`.

pub const FILES: &[(&str, &str)] = &[("recipes.ptl", include_str!("../../stdlib/recipes.ptl"))];

pub fn get(name: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}
