//! Test-only: a well-formed WebAssembly component that exports some other
//! interface, so the host must reject it at load with a clear message.

wit_bindgen::generate!({
    inline: "
        package test:other;
        interface greeter { greet: func(name: string) -> string; }
        world other { export greeter; }
    ",
});

struct Greeter;

impl exports::test::other::greeter::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}

export!(Greeter);
