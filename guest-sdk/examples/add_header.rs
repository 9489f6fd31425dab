//! The smallest useful filter: `x-served-by: portcullis` on every response.
//!
//! Build: `cargo build --release --target wasm32-unknown-unknown --example add_header`
//! (the module is `target/wasm32-unknown-unknown/release/examples/add_header.wasm`).

use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext};

portcullis_guest::main! {
    portcullis_guest::proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader;
impl Context for AddHeader {}
impl HttpContext for AddHeader {
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-served-by", Some("portcullis"));
        Action::Continue
    }
}
